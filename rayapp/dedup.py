"""Deduplicate a whole index as a Ray job: every stored image searched against every shard.

    neardup dedup --index-dir DIR --out OUT
    ray job submit --working-dir . -- python -m rayapp.dedup --index-dir DIR --out OUT
    neardup dedup FOLDER...            (indexes into a temporary index, then the same job)

Each task takes one page of a shard's stored images (``ShardActor.records``: code, side
vector, keypoints, so nothing is decoded again), searches them all in one fan-out through the
same :class:`rayapp.searcher.Searcher` as ``/v1/search`` and keeps the matches at or above
``min_confidence`` (calibrated precision). Tasks are spread over the cluster; each writes one
Parquet part, renamed into place, so a killed job re-runs only the pages it had not finished.
The parts merge into ``edges.parquet`` (a, b, confidence, distance, variant, overlap,
overlap_colour: each pair once); with full views each pair's files are read again and
look-alikes whose aligned overlap disagrees go to ``look_alikes.parquet`` instead
(``rayapp.dedup_overlap``);
star groups (``rayapp.groups``: no chaining) with a ``keep`` suggestion go to
``groups.parquet`` and ``groups.csv``, and the pages of ``report.html`` show them.

Python, in imagededup's shape:

>>> from rayapp.dedup import find_duplicates, find_duplicates_to_remove, plot_duplicates
>>> dupes = find_duplicates(image_dir="photos/", min_confidence=0.99)
>>> dupes["beach.jpg"]
[('beach-small.jpg', 0.9993)]
>>> plot_duplicates(dupes, image_dir="photos/", outfile="duplicates.html")
>>> find_duplicates_to_remove(image_dir="photos/")  # all but one copy of each group
['beach-small.jpg']
"""
from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import click
import ray
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rayapp.config import Config, load_config
from rayapp.dedup_options import job_options
from rayapp.dedup_overlap import CHECKED_SCHEMA, check_overlaps, split_look_alikes
from rayapp.dedup_pages import EDGE_SCHEMA, IMAGE_SCHEMA, DedupOptions, load_plan, read_parts, run_pages
from rayapp.groups import Group, star_groups
from rayapp.report import LOOK_ALIKES_PAGE, write_look_alikes, write_report

@dataclass
class DedupReport:
    images: int
    edges: int
    groups: list[Group] = field(repr=False, default_factory=list)
    seconds: float = 0.0
    calibrated: bool = True
    out_dir: str = ""
    image_ids: list[str] = field(repr=False, default_factory=list)
    bits: int = 0
    look_alikes: int = 0  # matched pairs set aside by the overlap check (look_alikes.parquet)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def _merge_edges(edges: pa.Table) -> list[dict]:
    """Directed matches -> each unordered pair once, with its best confidence (or, uncalibrated,
    its smallest distance) and how that best match was made."""
    best: dict[tuple[str, str], dict] = {}
    for e in edges.to_pylist():
        a, b = sorted((e["a"], e["b"]))
        score = (e["confidence"] if e["confidence"] is not None else -e["distance"])
        seen = best.get((a, b))
        if seen is None or score > seen["_score"]:
            best[(a, b)] = {**e, "a": a, "b": b, "_score": score}
    ordered = sorted(best.values(), key=lambda e: (e["a"], e["b"]))
    return [{k: v for k, v in e.items() if k != "_score"} for e in ordered]


def _strength(edge: dict, bits: int) -> float:
    """The grouping weight: the confidence, or uncalibrated 1 - distance / bits."""
    return edge["confidence"] if edge["confidence"] is not None else round(1 - edge["distance"] / bits, 4)


def write_groups(out: Path, groups: list[Group], images: dict[str, dict], calibrated: bool) -> None:
    """groups.parquet and groups.csv: group, id, path, keep, confidence_to_keep (empty for the
    kept image, and for every image when the encoder is uncalibrated)."""
    rows = [{"group": n, "id": i, "path": images.get(i, {}).get("path"), "keep": i == g.keep,
             "confidence_to_keep": (g.members[i] if calibrated and i != g.keep else None)}
            for n, g in enumerate(groups, 1) for i in g.ids]
    schema = pa.schema([("group", pa.int32()), ("id", pa.string()), ("path", pa.string()),
                        ("keep", pa.bool_()), ("confidence_to_keep", pa.float64())])
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, out / "groups.parquet")
    pacsv.write_csv(table, out / "groups.csv")


def _without_look_alikes(edges: list[dict], images: dict[str, dict], out: Path, opts: DedupOptions,
                         max_pixels: int) -> tuple[list[dict], list[dict]]:
    """The edges whose aligned overlap agrees (``rayapp.dedup_overlap``; all of them, with no
    ``overlap``, when the check is off), and the others, also written to look_alikes.parquet."""
    checks = {}
    if opts.checks_overlap and edges:
        checks = check_overlaps(edges, {i: r["path"] for i, r in images.items()}, out / "parts", max_pixels,
                                opts.progress)
    kept, dropped = split_look_alikes(edges, checks)
    pq.write_table(pa.Table.from_pylist(dropped, schema=CHECKED_SCHEMA), out / "look_alikes.parquet")
    return kept, dropped


def run_dedup(cfg: Config, opts: DedupOptions | None = None) -> DedupReport:
    """Deduplicate the index of ``cfg`` (Ray must be initialised and its shards up). Resumable:
    a re-run with the same ``out_dir`` finishes the pages a killed run left."""
    from encoders.registry import get_encoder
    from rayapp.cluster import confidence_curves, get_shards
    opts = opts or DedupOptions()
    t0 = time.perf_counter()
    shards = get_shards(cfg)
    if not shards:
        raise click.ClickException(f"no shards are up for {cfg.storage.index_dir}")
    calibrated = "image" in confidence_curves(cfg)  # the encoder is loaded only when it is not
    if not calibrated and opts.radius is None:
        opts.radius = get_encoder(cfg.encoder.name, weights=cfg.encoder.weights, device="cpu").default_radius
    bits = 8 * ray.get(shards[0].widths.remote(), timeout=opts.timeout_s)["code_bytes"]
    out = Path(opts.out_dir)
    parts = out / "parts"
    run_pages(cfg, load_plan(out, shards, opts), opts, parts)
    edges = _merge_edges(read_parts(parts, "edges", EDGE_SCHEMA))
    images = {r["id"]: r for r in read_parts(parts, "images", IMAGE_SCHEMA).to_pylist()}
    edges, look_alikes = _without_look_alikes(edges, images, out, opts, cfg.encoder.max_pixels)
    pq.write_table(pa.Table.from_pylist(edges, schema=CHECKED_SCHEMA), out / "edges.parquet")
    groups = star_groups([(e["a"], e["b"], _strength(e, bits)) for e in edges],
                         {i: r["pixels"] for i, r in images.items()}, opts.support)
    write_groups(out, groups, images, calibrated)
    report = DedupReport(len(images), len(edges), groups, time.perf_counter() - t0, calibrated, str(out),
                         sorted(images), bits, len(look_alikes))
    if opts.report:
        _write_html(out, report, edges, look_alikes, images, opts, cfg.encoder.name)
    return report


def _write_html(out: Path, report: DedupReport, edges: list[dict], look_alikes: list[dict], images: dict,
                opts: DedupOptions, encoder: str) -> Path:
    how = {(e["a"], e["b"]): e for e in edges}

    def describe(a: str, b: str) -> str:
        e = how.get((a, b) if a < b else (b, a))
        if e is None:
            return ""
        return (f"distance {e['distance']}" if e["confidence"] is None else "") + \
            ("" if e["variant"] == "original" else f" as {e['variant']}")
    rule = (f"calibrated precision >= {opts.min_confidence}" if report.calibrated
            else f"within {opts.radius} bits (this encoder has no confidence curve)")
    summary = (f"{len(report.groups)} groups among {report.images} images ({encoder}; matches at {rule}; "
               f"each member matches the kept image directly)." +
               (f" {report.look_alikes} look-alike pairs whose aligned images disagree were set aside "
                "(look_alikes.parquet)." if report.look_alikes else ""))
    path_of = lambda i: images.get(i, {}).get("path")  # noqa: E731
    links = []
    if look_alikes:
        write_look_alikes(out, look_alikes, path_of)
        links.append((LOOK_ALIKES_PAGE, f"the {report.look_alikes} pairs set aside as look-alikes"))
    return write_report(out, report.groups, path_of, describe, summary=summary, per_page=opts.per_page,
                        links=links)


# ---------------------------------------------------------------- folders and the Python API
def dedup_paths(paths: list[str], opts: DedupOptions, encoder: str | None = None,
                weights: str | None = None, num_shards: int = 1) -> DedupReport:
    """Index ``paths`` (folders, files, globs) into a temporary index, then run the job. Ray
    is started embedded unless it runs already; the temporary shards are removed after."""
    from rayapp.cluster import init_ray, kill_shards
    from rayapp.ingest import IngestOptions, run_ingest
    init_ray()
    with tempfile.TemporaryDirectory(prefix="neardup-dedup-") as tmp:
        cfg = load_config(overrides={"encoder": {"name": encoder, "weights": weights},
                                     "storage": {"index_dir": tmp, "num_shards": num_shards,
                                                "namespace": f"dedup-{uuid.uuid4().hex[:8]}"}})
        run_ingest(cfg, list(paths), IngestOptions(progress=opts.progress))
        try:
            return run_dedup(cfg, opts)
        finally:
            kill_shards(cfg)


def _dedup_folder(image_dir: str, min_confidence: float, out_dir: str | None, encoder: str | None,
                  progress: bool) -> tuple[DedupReport, list[dict]]:
    """The job over one folder (indexed into a temporary index): its report and its edges."""
    with tempfile.TemporaryDirectory(prefix="neardup-find-") as tmp:
        opts = DedupOptions(out_dir=out_dir or tmp, min_confidence=min_confidence, report=False,
                            progress=progress)
        report = dedup_paths([image_dir], opts, encoder)
        return report, pq.read_table(Path(opts.out_dir) / "edges.parquet").to_pylist()


def find_duplicates(image_dir: str, min_confidence: float = 0.99, out_dir: str | None = None,
                    encoder: str | None = None, progress: bool = False) -> dict[str, list[tuple[str, float]]]:
    """Every image under ``image_dir`` (by its path relative to it) -> its duplicates there, as
    (name, confidence) pairs, most confident first; an image without duplicates maps to [].

    >>> find_duplicates(image_dir="photos/")["beach.jpg"]
    [('beach-small.jpg', 0.9993)]
    """
    report, edges = _dedup_folder(image_dir, min_confidence, out_dir, encoder, progress)
    dupes: dict[str, list[tuple[str, float]]] = {i: [] for i in report.image_ids}
    for e in edges:
        score = round(_strength(e, report.bits), 4)
        dupes.setdefault(e["a"], []).append((e["b"], score))
        dupes.setdefault(e["b"], []).append((e["a"], score))
    return {k: sorted(v, key=lambda x: (-x[1], x[0])) for k, v in sorted(dupes.items())}


def find_duplicates_to_remove(image_dir: str, min_confidence: float = 0.99, out_dir: str | None = None,
                              encoder: str | None = None, progress: bool = False) -> list[str]:
    """The images under ``image_dir`` to delete so that one copy of each is left: every member of
    every duplicate group but the one the group keeps (the copy most of the others match, then
    the most pixels: ``rayapp.groups``), sorted by name.

    >>> find_duplicates_to_remove(image_dir="photos/")
    ['beach-small.jpg']
    """
    report, _ = _dedup_folder(image_dir, min_confidence, out_dir, encoder, progress)
    return sorted(i for g in report.groups for i in g.ids if i != g.keep)


def plot_duplicates(duplicates: dict[str, list[tuple[str, float]]], image_dir: str,
                    outfile: str = "duplicates.html") -> Path:
    """The report of ``find_duplicates``' answer: star groups (``rayapp.groups``) over its
    pairs, thumbnails from ``image_dir``. Returns the report's first page."""
    pixels = {}
    for name in duplicates:
        try:
            from PIL import Image
            with Image.open(Path(image_dir) / name) as im:
                pixels[name] = im.width * im.height
        except OSError:
            pixels[name] = 0
    groups = star_groups([(a, b, c) for a, bs in duplicates.items() for b, c in bs], pixels)
    out = Path(outfile)
    first = write_report(out.parent, groups, lambda i: str(Path(image_dir) / i),
                         summary=f"{len(groups)} groups among {len(duplicates)} images.")
    if first.name != out.name:
        first.rename(out)
    return out


@click.command(name="dedup")
@click.option("--index-dir", required=True, help="Index built by `neardup index`.")
@job_options
def main(index_dir, out_dir, min_confidence, radius, views, overlap_check, k, batch, address, quiet) -> None:
    """Deduplicate a whole index as a Ray job (resumable; see rayapp.dedup)."""
    from rayapp.cluster import ensure_shards, init_ray, read_index_meta
    meta = read_index_meta(index_dir)
    if meta is None:
        raise click.ClickException(f"no index at {index_dir} (missing neardup.json)")
    cfg = load_config(overrides={"encoder": {"name": meta["encoder"]}, "storage": {"index_dir": index_dir}})
    init_ray(address)
    ensure_shards(cfg)
    report = run_dedup(cfg, DedupOptions(out_dir=out_dir, min_confidence=min_confidence, views=views,
                                         radius=radius, k=k, batch=batch, progress=not quiet,
                                         overlap_check=overlap_check))
    print_groups(report)


def print_groups(report: DedupReport) -> None:
    for n, g in enumerate(report.groups, 1):
        click.echo(f"group {n}: " + ", ".join(Path(i).name for i in g.ids))
    set_aside = f" ({report.look_alikes} look-alike pairs set aside)" if report.look_alikes else ""
    click.echo(f"{len(report.groups)} groups among {report.images} images, {report.edges} matching pairs{set_aside}, "
               f"in {report.seconds:.1f}s ({report.images_per_s:.0f} images/s); "
               f"report: {Path(report.out_dir) / 'report.html'}")


if __name__ == "__main__":
    main()
