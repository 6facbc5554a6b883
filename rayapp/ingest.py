"""Bulk indexing as a Ray Data job.

    ray job submit --working-dir . -- python -m rayapp.ingest SOURCE... --index-dir DIR

Pipeline: list sources -> decode + resize (CPU tasks) -> encode (actor pool, GPU when the
cluster has one) -> add to the owning shard (durable before it returns) -> manifest Parquet.
Each image is stored with its reference views (``encoder.ref_views``: codes of its crops, so
that a crop of it is found; ``shards.views``), decoded and encoded alongside it.
A row reaches the manifest only after its shard acknowledged it, so a re-run skips exactly
what is done; adds are idempotent by id, so a crash between ack and manifest is harmless.
SOURCE is a folder, a file, a glob, or Parquet with an image-bytes column; ``pyarrow.fs``
URIs (``s3://``, ``gs://``) work where credentials exist.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import click
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from encoders.decode import IMAGE_EXTENSIONS
from rayapp import metrics
from rayapp.config import Config, load_config
from rayapp.store_encoding import BatchEncoder, add_batch, decode_batch

MAX_BLOCKS = 20_000  # file listings split into at most this many Ray Data blocks
MANIFEST_SCHEMA_BASE = [("id", pa.string()), ("path", pa.string()), ("shard", pa.int32()),
                        ("error", pa.string())]


@dataclass
class IngestOptions:
    batch_size: int = 64
    encoders: int = 1              # max encoder actors in the pool
    manifest_dir: str | None = None  # default: <index_dir>/manifest
    resume: bool = True
    progress: bool = True
    image_column: str = "image"    # Parquet sources
    id_column: str = "id"
    flush_rows: int = 5000         # manifest rows per Parquet part (a re-run resumes from parts)


@dataclass
class IngestReport:
    listed: int
    skipped: int
    indexed: int
    errors: int
    seconds: float
    manifest_dir: str
    #: when the first batch came back: the pipeline's start (encoder actors loading the model)
    first_batch_s: float | None = None
    first_batch: int = 0  # images in it

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float | None:
        """The rate from the first batch on: what a longer run tends to, start-up left out."""
        after = self.seconds - (self.first_batch_s or 0.0)
        if self.first_batch_s is None or after <= 0 or self.indexed <= self.first_batch:
            return None
        return (self.indexed - self.first_batch) / after


# ---------------------------------------------------------------- listing

def _is_parquet(source: str) -> bool:
    return source.endswith(".parquet") or source.endswith(".parq")


def list_files(source: str) -> list[dict]:
    """Rows {"id", "path"} for a folder, file or glob; ids are paths relative to the source root."""
    if any(ch in source for ch in "*?[") and "://" not in source:
        root = Path(source.split("*")[0].split("?")[0].split("[")[0]).parent
        paths = sorted(Path(p) for p in globlib.glob(source, recursive=True) if Path(p).is_file())
        return [{"id": p.relative_to(root).as_posix(), "path": str(p.resolve())}
                for p in paths if p.suffix.lower() in IMAGE_EXTENSIONS]
    fs, root = pafs.FileSystem.from_uri(source if "://" in source else str(Path(source).resolve()))
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"source not found: {source}")
    prefix = source.split("://")[0] + "://" if "://" in source else ""
    if info.type == pafs.FileType.File:
        return [{"id": PurePosixPath(root).name, "path": prefix + root}]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    rows = [{"id": PurePosixPath(i.path).relative_to(root).as_posix(), "path": prefix + i.path}
            for i in infos if i.type == pafs.FileType.File
            and PurePosixPath(i.path).suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in PurePosixPath(i.path).relative_to(root).parts)]
    return sorted(rows, key=lambda r: r["id"])


def load_done_ids(manifest_dir: str) -> set[str]:
    """Ids the manifest records as indexed (errors are retried on the next run)."""
    d = Path(manifest_dir)
    if not d.is_dir():
        return set()
    done: set[str] = set()
    for part in sorted(d.glob("part-*.parquet")):
        t = pq.read_table(part, columns=["id", "error"])
        ok = t.filter(pa.compute.is_null(t["error"]))
        done.update(ok["id"].to_pylist())
    return done


# ---------------------------------------------------------------- pipeline stages

class EncodeActor(BatchEncoder):
    """Ray Data actor: holds one encoder (on GPU when given one) and encodes batches."""

    def __init__(self, name: str, weights: str | None, device: str, runtime: str = "auto"):
        from encoders.registry import get_encoder
        super().__init__(get_encoder(name, weights=weights, device=device, runtime=runtime))


class ShardWriter:
    """Ray Data actor: adds encoded rows to their shards (durable on return), emits manifest rows."""

    def __init__(self, cfg_dict: dict, timeout_s: float):
        from rayapp.cluster import get_shards
        from rayapp.router import ShardRouter
        cfg = Config.from_dict(cfg_dict)
        self.router = ShardRouter(get_shards(cfg), timeout_s=timeout_s)
        self.ref_views = list(cfg.storage.ref_views)

    def __call__(self, batch: dict) -> dict:
        add_batch(self.router, batch, self.ref_views)
        shard = np.array([self.router.shard_for(str(i)) for i in batch["id"]], dtype=np.int32)
        return {"id": batch["id"], "path": batch["path"], "code": batch["code"], "shard": shard,
                "error": batch["error"]}


# ---------------------------------------------------------------- driver

def build_dataset(cfg: Config, sources: list[str], opts: IngestOptions, done: set[str],
                  input_size: int) -> tuple["ray.data.Dataset", int, int]:
    """The lazy Ray Data pipeline plus (rows listed, rows skipped as already done)."""
    parquet = [s for s in sources if _is_parquet(s)]
    files = [s for s in sources if not _is_parquet(s)]
    parts, listed, skipped = [], 0, 0
    if files:
        rows = [r for s in files for r in list_files(s)]
        _check_unique(rows)
        listed += len(rows)
        todo = [r for r in rows if r["id"] not in done]
        skipped += len(rows) - len(todo)
        if todo:
            # One block per batch (at most MAX_BLOCKS): each finished block becomes manifest
            # rows, so a killed job resumes close to where it stopped, even on a small input.
            blocks = min(MAX_BLOCKS, max(1, -(-len(todo) // opts.batch_size)))
            parts.append(ray.data.from_items(todo, override_num_blocks=blocks))
    for src in parquet:
        ds = _parquet_rows(src, opts)
        listed += _parquet_count(src)
        if done:
            ds = ds.filter(lambda r: r["id"] not in done)
        parts.append(ds)
    if not parts:
        return None, listed, skipped
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    resources = ray.cluster_resources()
    gpu = resources.get("GPU", 0) > 0 and cfg.encoder.device != "cpu"
    ds = ds.map_batches(decode_batch, batch_size=opts.batch_size,
                        num_cpus=decode_cpus(resources.get("CPU", 1.0), 0 if gpu else max(1, opts.encoders)),
                        fn_kwargs={"size": input_size, "max_pixels": cfg.encoder.max_pixels,
                                   "ref_views": tuple(cfg.storage.ref_views),
                                   "keypoints": bool(cfg.storage.keypoints)})
    ds = ds.map_batches(EncodeActor, batch_size=opts.batch_size,
                        fn_constructor_args=(cfg.encoder.name, cfg.encoder.weights,
                                             "cuda" if gpu else "cpu", cfg.encoder.runtime),
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, opts.encoders)),
                        **({"num_gpus": 1} if gpu else {"num_cpus": 1}))
    ds = ds.map_batches(ShardWriter, batch_size=opts.batch_size, num_cpus=0,
                        fn_constructor_args=(cfg.to_dict(), max(30.0, cfg.serve.shard_timeout_s)),
                        compute=ray.data.ActorPoolStrategy(size=1))
    return ds, listed, skipped


def decode_cpus(cpus: float, encoder_cpus: float) -> float:
    """Logical CPUs per decode task, so that as many decode tasks as there are CPUs run beside
    the encoder actors. On CPU, decoding (with keypoints) is the slower stage: an encoder actor
    holding a whole CPU waits for batches part of the time, and a decode task of one CPU each
    left the other stages one decode at a time on a 2-core node."""
    return max(1.0, cpus - encoder_cpus) / max(1.0, cpus)


def _parquet_rows(src: str, opts: IngestOptions) -> "ray.data.Dataset":
    ds = ray.data.read_parquet(src)
    cols = ds.columns()
    if opts.image_column not in cols:
        raise ValueError(f"{src}: no image-bytes column {opts.image_column!r} (columns: {cols})")
    has_id, has_path = opts.id_column in cols, "path" in cols

    def rows(batch: dict) -> dict:
        data = batch[opts.image_column]
        ids = batch[opts.id_column] if has_id else [hashlib.sha256(bytes(b)).hexdigest() for b in data]
        paths = batch["path"] if has_path else [f"{src}#{i}" for i in ids]
        return {"id": np.array([str(i) for i in ids], dtype=object),
                "path": np.array([str(p) for p in paths], dtype=object), "bytes": data}
    return ds.map_batches(rows, batch_format="numpy")


def _parquet_count(src: str) -> int:
    """Rows of a Parquet source, from its files' footers: counting the dataset itself would read
    every image's bytes once more before the pipeline reads them."""
    import pyarrow.dataset as pads
    return pads.dataset(src, format="parquet").count_rows()


def _check_unique(rows: list[dict]) -> None:
    seen: dict[str, str] = {}
    for r in rows:
        if r["id"] in seen and seen[r["id"]] != r["path"]:
            raise ValueError(f"two sources give the same id {r['id']!r}: {seen[r['id']]} and "
                             f"{r['path']}; index them into separate runs or rename")
        seen[r["id"]] = r["path"]


def run_ingest(cfg: Config, sources: list[str], opts: IngestOptions | None = None) -> IngestReport:
    """Index ``sources`` into the shards of ``cfg`` (Ray must be initialised). Resumable."""
    from encoders.registry import get_encoder
    from rayapp.cluster import ensure_shards
    from rayapp.stderr_noise import without_known_noise
    cfg.validate()
    opts = opts or IngestOptions()
    enc = get_encoder(cfg.encoder.name, weights=cfg.encoder.weights, device="cpu")
    ensure_shards(cfg, bits=enc.bits, vector_bytes=enc.vector_bytes)
    manifest_dir = opts.manifest_dir or str(Path(cfg.storage.index_dir) / "manifest")
    done = load_done_ids(manifest_dir) if opts.resume else set()
    t0 = time.perf_counter()
    ds, listed, skipped = build_dataset(cfg, sources, opts, done, enc.input_size)
    indexed = errors = first_batch = 0
    first_batch_s = None
    if ds is not None:
        writer = ManifestWriter(manifest_dir, enc.code_bytes, flush_rows=opts.flush_rows)
        with without_known_noise(), \
                tqdm(total=listed - skipped, unit="img", desc="indexing", disable=not opts.progress) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                n_err = sum(1 for e in batch["error"] if e)
                writer.write(batch)
                indexed += len(batch["id"]) - n_err
                errors += n_err
                metrics.count_ingested(len(batch["id"]) - n_err, n_err)
                metrics.set_ingest_rate(indexed / max(1e-9, time.perf_counter() - t0))
                bar.update(len(batch["id"]))
                if first_batch_s is None:
                    first_batch_s, first_batch = time.perf_counter() - t0, len(batch["id"]) - n_err
        writer.close()
        metrics.set_ingest_rate(0.0)  # the gauge is the current rate: the job is done
    return IngestReport(listed, skipped, indexed, errors, time.perf_counter() - t0, manifest_dir,
                        first_batch_s, first_batch)


class ManifestWriter:
    """Writes manifest rows (id, path, code, shard, error) as small, complete Parquet parts.

    A part is flushed every ``flush_rows`` rows or ``flush_s`` seconds and renamed into
    place atomically, so a killed job leaves only whole parts and a re-run resumes from them.
    """

    def __init__(self, manifest_dir: str, code_bytes: int, flush_rows: int = 5000,
                 flush_s: float = 15.0):
        self.dir = Path(manifest_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.schema = pa.schema(MANIFEST_SCHEMA_BASE[:2] + [("code", pa.binary(code_bytes))]
                                + MANIFEST_SCHEMA_BASE[2:])
        self.code_bytes, self.flush_rows, self.flush_s = code_bytes, flush_rows, flush_s
        self.pending: list[pa.Table] = []
        self.last_flush = time.monotonic()

    def write(self, batch: dict) -> None:
        codes = np.ascontiguousarray(batch["code"], dtype=np.uint8)
        self.pending.append(pa.table({
            "id": pa.array([str(x) for x in batch["id"]], pa.string()),
            "path": pa.array([str(x) for x in batch["path"]], pa.string()),
            "code": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(self.code_bytes), len(codes), [None, pa.py_buffer(codes.tobytes())]),
            "shard": pa.array(batch["shard"], pa.int32()),
            "error": pa.array([str(e) if e else None for e in batch["error"]], pa.string()),
        }, schema=self.schema))
        rows = sum(t.num_rows for t in self.pending)
        if rows >= self.flush_rows or time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = self.dir / f".{name}.tmp"
            pq.write_table(pa.concat_tables(self.pending), tmp)
            tmp.rename(self.dir / name)
            self.pending = []
        self.last_flush = time.monotonic()

    close = flush


def read_manifest(manifest_dir: str) -> pa.Table:
    """All manifest parts as one table."""
    parts = sorted(Path(manifest_dir).glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no manifest parts in {manifest_dir}")
    return pa.concat_tables([pq.read_table(p) for p in parts])


@click.command(name="index")
@click.argument("sources", nargs=-1, required=True)
@click.option("--index-dir", "--index", "index_dir", required=True, help="Where the shards keep their data.")
@click.option("--encoder", default=None, help="Encoder name (default: the registry default).")
@click.option("--weights", default=None, help="Local weights file for the encoder.")
@click.option("--shards", "num_shards", type=int, default=None, help="Shards when creating a local index.")
@click.option("--address", default=None, help="Ray address of a running cluster (default: embedded).")
@click.option("--config", "config_path", default=None, help="YAML config file.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--encoders", type=int, default=1, show_default=True, help="Max encoder actors.")
@click.option("--manifest", "manifest_dir", default=None, help="Manifest dir (default INDEX_DIR/manifest).")
@click.option("--no-resume", is_flag=True, help="Re-process ids already in the manifest.")
@click.option("--image-column", default="image", show_default=True, help="Parquet image-bytes column.")
@click.option("--flush-rows", type=click.IntRange(1), default=5000, show_default=True,
              help="Manifest rows per Parquet part (smaller: finer-grained resume).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(sources, index_dir, encoder, weights, num_shards, address, config_path, batch_size,
         encoders, manifest_dir, no_resume, image_column, flush_rows, quiet) -> None:
    """Bulk-index images (folders, files, globs, Parquet) into the sharded index. Resumable."""
    from rayapp.cluster import init_ray
    cfg = load_config(config_path, overrides={
        "encoder": {"name": encoder, "weights": weights},
        "storage": {"index_dir": index_dir, "num_shards": num_shards}})
    init_ray(address)
    opts = IngestOptions(batch_size=batch_size, encoders=encoders, manifest_dir=manifest_dir,
                         resume=not no_resume, progress=not quiet, image_column=image_column,
                         flush_rows=flush_rows)
    report = run_ingest(cfg, list(sources), opts)
    steady = report.steady_images_per_s
    after = "" if steady is None else f", {steady:.1f} img/s after the first batch at {report.first_batch_s:.1f}s"
    click.echo(f"listed {report.listed}, skipped {report.skipped} already indexed, indexed "
               f"{report.indexed}, errors {report.errors} in {report.seconds:.1f}s "
               f"({report.images_per_s:.1f} img/s{after}); manifest: {report.manifest_dir}")


if __name__ == "__main__":
    main()
