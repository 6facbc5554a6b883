"""Deduplicate a whole index as a Ray job: every stored image searched against every shard.

    neardup dedup --index-dir DIR --out OUT
    ray job submit --working-dir . -- python -m rayapp.dedup --index-dir DIR --out OUT
    neardup dedup FOLDER...            (indexes into a temporary index, then the same job)

Each task takes one page of a shard's stored images (``ShardActor.records``: code, side
vector, keypoints, so nothing is decoded again), searches them all in one fan-out through the
same :class:`rayapp.searcher.Searcher` as ``/v1/search`` and keeps the matches at or above
``min_confidence`` (calibrated precision). Tasks are spread over the cluster; each writes one
Parquet part, renamed into place, so a killed job re-runs only the pages it had not finished.
The parts merge into ``edges.parquet`` (a, b, confidence, distance, variant: each pair once),
star groups (``rayapp.groups``: no chaining) with a ``keep`` suggestion go to
``groups.parquet`` and ``groups.csv``, and the pages of ``report.html`` show them.

Python, in imagededup's shape:

>>> from rayapp.dedup import find_duplicates, plot_duplicates
>>> dupes = find_duplicates(image_dir="photos/", min_confidence=0.99)
>>> dupes["beach.jpg"]
[('beach-small.jpg', 0.9993)]
>>> plot_duplicates(dupes, image_dir="photos/", outfile="duplicates.html")
"""
from __future__ import annotations

import json
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from rayapp.config import Config, load_config
from rayapp.groups import Group, star_groups
from rayapp.report import write_report

EDGE_SCHEMA = pa.schema([("a", pa.string()), ("b", pa.string()), ("confidence", pa.float64()),
                         ("distance", pa.int32()), ("rank", pa.float64()), ("variant", pa.string())])
MAX_PAGE_TRIES = 3
SUPPORT = 0.5  # chosen on validation (bench/dedup.py, bench/results/dedup_*.json)
PLAN_KEYS = ("batch", "min_confidence", "views", "k", "radius")  # a re-run with others starts over
IMAGE_SCHEMA = pa.schema([("id", pa.string()), ("path", pa.string()), ("pixels", pa.int64())])


@dataclass
class DedupOptions:
    """How the job runs. Without a confidence curve for the encoder (PDQ, pHash, other weights)
    edges are the matches within ``radius`` bits (default: the encoder's) instead."""

    out_dir: str = "neardup-dedup"
    min_confidence: float = 0.99
    # full: each image is read again from its stored path and searched with every view of
    # /v1/search (mirrored, turned, the pasted photo, ...); stored: its stored record only
    # (code, side vector, keypoints: nothing is decoded, several times faster, fewer matches)
    views: str = "full"
    radius: int | None = None
    support: float = SUPPORT    # rayapp.groups.star_groups: an image joins through this share of a group
    k: int = 20                 # matches looked at per stored image
    batch: int = 256            # stored images per task
    timeout_s: float = 60.0     # per shard call
    report: bool = True
    per_page: int = 50          # groups per report page
    progress: bool = True


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

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------- one task: a page of a shard
def _queries(page: dict, widths: dict, rank: str) -> list:
    """A page of stored records -> one QueryViews each (the image as stored: no views)."""
    from rayapp.searcher import QueryViews
    cb, vb = widths["code_bytes"], widths["vector_bytes"]
    out = []
    for rec in page["records"]:
        vec = rec[cb:cb + vb].view(np.int8)[None] if vb and rank == "vector" else None
        kp = rec[cb + vb:]
        out.append(QueryViews(rec[None, :cb], ["original"], None, vec,
                              kp if len(kp) and kp[:2].any() else None))
    return out


def _edges(ids: list[str], answers: list) -> list[dict]:
    """Each stored image's matches, itself left out."""
    from rayapp.searcher import matched_as
    rows = []
    for a, answer in zip(ids, answers):
        for h in answer.hits:
            if h["id"] != a:
                rows.append({"a": a, "b": str(h["id"]), "confidence": h.get("confidence"),
                             "distance": int(h["distance"]), "rank": float(h["rank"]),
                             "variant": matched_as(h)})
    return rows


def _write_part(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    tmp.rename(path)


class DedupWorker:
    """A Ray actor that searches pages of stored images: it holds one router and Searcher, so
    imports, shard lookups and the calibration curve are paid once, not per page."""

    def __init__(self, cfg_dict: dict, opts_dict: dict):
        from encoders import calibration
        from rayapp.cluster import get_shards, model_id
        from rayapp.router import ShardRouter
        from rayapp.searcher import Searcher
        self.cfg, self.opts = Config.from_dict(cfg_dict), DedupOptions(**opts_dict)
        self.shards = get_shards(self.cfg)
        router = ShardRouter(self.shards, timeout_s=self.opts.timeout_s,
                             ref_views=len(self.cfg.encoder.ref_views),
                             ref_view_cost=self.cfg.encoder.ref_view_cost)
        self.searcher = Searcher(router, self.cfg.encoder, calibration.load(model_id(self.cfg)))
        self.calibrated = "image" in self.searcher.curves
        self.widths = ray.get(self.shards[0].widths.remote(), timeout=self.opts.timeout_s)
        self.encoder = None
        if self.opts.views == "full":
            from encoders.registry import get_encoder
            self.encoder = get_encoder(self.cfg.encoder.name, weights=self.cfg.encoder.weights, device="cpu")

    def _page_queries(self, page: dict) -> list:
        """The page's queries: each image's full views when its file can be read here (else,
        and with views=stored, its stored record)."""
        from encoders.decode import load_image
        from rayapp.searcher import encode_query
        stored = _queries(page, self.widths, self.cfg.encoder.rank)
        if self.encoder is None:
            return stored
        out = []
        for q, meta in zip(stored, page["metas"]):
            try:
                img = load_image(meta.get("path", ""), max_pixels=self.cfg.encoder.max_pixels)
            except (OSError, ValueError):
                out.append(q)
                continue
            full = encode_query(self.encoder, img, self.cfg.encoder, keypoints=False)
            full.weights, full.keypoints = None, q.keypoints  # as the stored records: one layout
            full.vectors = None if q.vectors is None else full.vectors
            out.append(full)
        return out

    def run_page(self, shard: int, after: int | None, part: str) -> int:
        """Search one page of shard ``shard`` (the records after key ``after``) and write its
        images and edges as Parquet parts ``part``.images / ``part``.edges; returns its images."""
        opts = self.opts
        page = ray.get(self.shards[shard].records.remote(after, opts.batch), timeout=opts.timeout_s)
        answers = self.searcher.search_many(
            self._page_queries(page), opts.k + 1,
            opts.min_confidence if self.calibrated else 0.0,
            None if self.calibrated else opts.radius) if page["ids"] else []
        if any(a.partial for a in answers):
            raise RuntimeError(f"shards {answers[0].missing} did not answer; the page will be retried")
        images = [{"id": i, "path": m.get("path"), "pixels": int(m.get("width", 0)) * int(m.get("height", 0))}
                  for i, m in zip(page["ids"], page["metas"])]
        _write_part(Path(part + ".images.parquet"), images, IMAGE_SCHEMA)
        _write_part(Path(part + ".edges.parquet"), _edges(page["ids"], answers), EDGE_SCHEMA)
        return len(images)  # the edges part is written last: its presence marks the page done


# ---------------------------------------------------------------- the job
def plan_pages(shards: list, batch: int, timeout_s: float) -> list[dict]:
    """Every page of every shard: {"shard", "after", "name"}, from each shard's page starts."""
    pages = []
    for s, starts in enumerate(ray.get([h.page_starts.remote(batch) for h in shards], timeout=timeout_s)):
        pages += [{"shard": s, "after": a, "name": f"s{s:04d}-p{p:07d}"} for p, a in enumerate(starts)]
    return pages


def _load_plan(out: Path, shards: list, opts: DedupOptions) -> list[dict]:
    """The job's pages, fixed at its first run (``parts/plan.json``) so a re-run resumes the same
    pages; a re-run with other PLAN_KEYS settings starts over."""
    plan_file = out / "parts" / "plan.json"
    if plan_file.exists():
        plan = json.loads(plan_file.read_text())
        if all(plan.get(key) == getattr(opts, key) for key in PLAN_KEYS):
            return plan["pages"]
    for old in (out / "parts").glob("*.parquet"):
        old.unlink()
    pages = plan_pages(shards, opts.batch, opts.timeout_s)
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps({**{key: getattr(opts, key) for key in PLAN_KEYS}, "pages": pages}))
    return pages


def _run_pages(cfg: Config, pages: list[dict], opts: DedupOptions, parts: Path) -> None:
    """Run the pages not done yet on a pool of DedupWorker actors, one per free cluster CPU,
    spread over the nodes; a page whose worker died or whose shards did not answer is run again."""
    todo = [p for p in pages if not (parts / f"{p['name']}.edges.parquet").exists()]
    if not todo:
        return
    # size the pool by the CPUs free now: Serve replicas or an ingest may hold the rest, and a
    # worker asking for a CPU nobody frees would wait forever
    free_cpus = ray.available_resources().get("CPU", 0)
    n = max(1, min(len(todo), int(free_cpus)))
    worker = ray.remote(DedupWorker).options(num_cpus=1 if free_cpus >= 1 else 0,
                                             scheduling_strategy="SPREAD",
                                             max_restarts=-1, max_task_retries=3)
    pool = [worker.remote(cfg.to_dict(), asdict(opts)) for _ in range(n)]
    pending: dict = {}
    with tqdm(total=len(pages), initial=len(pages) - len(todo), unit="page", desc="dedup",
              disable=not opts.progress) as bar:
        free, tries = list(pool), {}
        while todo or pending:
            while todo and free:
                p, w = todo.pop(), free.pop()
                pending[w.run_page.remote(p["shard"], p["after"], str(parts / p["name"]))] = (p, w)
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                p, w = pending.pop(ref)
                try:
                    ray.get(ref)
                    bar.update(1)
                except (RuntimeError, ray.exceptions.RayError) as exc:
                    tries[p["name"]] = tries.get(p["name"], 0) + 1
                    if tries[p["name"]] > MAX_PAGE_TRIES:
                        raise click.ClickException(f"page {p['name']} failed {MAX_PAGE_TRIES} times "
                                                   f"({exc}); re-run to resume") from None
                    todo.append(p)  # run again: its parts are written atomically
                free.append(w)
    for w in pool:
        ray.kill(w)


def _read_parts(parts: Path, kind: str, schema: pa.Schema) -> pa.Table:
    files = sorted(parts.glob(f"*.{kind}.parquet"))
    return pa.concat_tables([pq.read_table(f, schema=schema) for f in files]) if files else schema.empty_table()


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
    return [{k: v for k, v in e.items() if k != "_score"} for e in sorted(best.values(), key=lambda e: (e["a"], e["b"]))]


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


def run_dedup(cfg: Config, opts: DedupOptions | None = None) -> DedupReport:
    """Deduplicate the index of ``cfg`` (Ray must be initialised and its shards up). Resumable:
    a re-run with the same ``out_dir`` finishes the pages a killed run left."""
    from encoders import calibration
    from encoders.registry import get_encoder
    from rayapp.cluster import get_shards, model_id
    opts = opts or DedupOptions()
    t0 = time.perf_counter()
    shards = get_shards(cfg)
    if not shards:
        raise click.ClickException(f"no shards are up for {cfg.shards.index_dir}")
    enc = get_encoder(cfg.encoder.name, weights=cfg.encoder.weights, device="cpu")
    calibrated = "image" in calibration.load(model_id(cfg))
    if not calibrated and opts.radius is None:
        opts.radius = enc.default_radius
    out = Path(opts.out_dir)
    parts = out / "parts"
    _run_pages(cfg, _load_plan(out, shards, opts), opts, parts)
    edges = _merge_edges(_read_parts(parts, "edges", EDGE_SCHEMA))
    pq.write_table(pa.Table.from_pylist(edges, schema=EDGE_SCHEMA), out / "edges.parquet")
    images = {r["id"]: r for r in _read_parts(parts, "images", IMAGE_SCHEMA).to_pylist()}
    groups = star_groups([(e["a"], e["b"], _strength(e, enc.bits)) for e in edges],
                         {i: r["pixels"] for i, r in images.items()}, opts.support)
    write_groups(out, groups, images, calibrated)
    report = DedupReport(len(images), len(edges), groups, time.perf_counter() - t0, calibrated, str(out),
                         sorted(images), enc.bits)
    if opts.report:
        _write_html(out, report, edges, images, opts, enc.name)
    return report


def _write_html(out: Path, report: DedupReport, edges: list[dict], images: dict, opts: DedupOptions,
                encoder: str) -> Path:
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
               f"each member matches the kept image directly).")
    return write_report(out, report.groups, lambda i: images.get(i, {}).get("path"), describe,
                        summary=summary, per_page=opts.per_page)


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
                                     "shards": {"index_dir": tmp, "num_shards": num_shards,
                                                "namespace": f"dedup-{uuid.uuid4().hex[:8]}"}})
        run_ingest(cfg, list(paths), IngestOptions(progress=opts.progress))
        try:
            return run_dedup(cfg, opts)
        finally:
            kill_shards(cfg)


def find_duplicates(image_dir: str, min_confidence: float = 0.99, out_dir: str | None = None,
                    encoder: str | None = None, progress: bool = False) -> dict[str, list[tuple[str, float]]]:
    """Every image under ``image_dir`` (by its path relative to it) -> its duplicates there, as
    (name, confidence) pairs, most confident first; an image without duplicates maps to [].

    >>> find_duplicates(image_dir="photos/")["beach.jpg"]
    [('beach-small.jpg', 0.9993)]
    """
    with tempfile.TemporaryDirectory(prefix="neardup-find-") as tmp:
        opts = DedupOptions(out_dir=out_dir or tmp, min_confidence=min_confidence, report=False,
                            progress=progress)
        report = dedup_paths([image_dir], opts, encoder)
        edges = pq.read_table(Path(opts.out_dir) / "edges.parquet").to_pylist()
    dupes: dict[str, list[tuple[str, float]]] = {i: [] for i in report.image_ids}
    for e in edges:
        score = round(_strength(e, report.bits), 4)
        dupes.setdefault(e["a"], []).append((e["b"], score))
        dupes.setdefault(e["b"], []).append((e["a"], score))
    return {k: sorted(v, key=lambda x: (-x[1], x[0])) for k, v in sorted(dupes.items())}


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
@click.option("--out", "out_dir", default="neardup-dedup", show_default=True,
              help="Where edges.parquet, groups.parquet, groups.csv and report.html go.")
@click.option("--min-confidence", default=0.99, show_default=True, type=click.FloatRange(0, 1),
              help="Keep matches at least this likely to be copies (calibrated precision).")
@click.option("--radius", default=None, type=int, help="Uncalibrated encoders: matches within this many bits.")
@click.option("--views", default="full", show_default=True, type=click.Choice(["full", "stored"]),
              help="full: read each image again and search all its query views; stored: its stored record only.")
@click.option("--k", default=20, show_default=True, type=click.IntRange(1, 1000), help="Matches looked at per image.")
@click.option("--batch", default=256, show_default=True, type=click.IntRange(1, 10_000), help="Images per task.")
@click.option("--address", default=None, help="Ray address of a running cluster (default: embedded).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(index_dir, out_dir, min_confidence, radius, views, k, batch, address, quiet) -> None:
    """Deduplicate a whole index as a Ray job (resumable; see rayapp.dedup)."""
    from rayapp.cluster import ensure_shards, init_ray
    meta = json.loads((Path(index_dir) / "neardup.json").read_text())
    cfg = load_config(overrides={"encoder": {"name": meta["encoder"]}, "shards": {"index_dir": index_dir}})
    init_ray(address)
    ensure_shards(cfg)
    report = run_dedup(cfg, DedupOptions(out_dir, min_confidence, views, radius, k, batch, progress=not quiet))
    print_groups(report)


def print_groups(report: DedupReport) -> None:
    for n, g in enumerate(report.groups, 1):
        click.echo(f"group {n}: " + ", ".join(Path(i).name for i in g.ids))
    click.echo(f"{len(report.groups)} groups among {report.images} images, {report.edges} matching pairs, "
               f"in {report.seconds:.1f}s ({report.images_per_s:.0f} images/s); "
               f"report: {Path(report.out_dir) / 'report.html'}")


if __name__ == "__main__":
    main()
