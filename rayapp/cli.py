"""The ``neardup`` console script: encode, index, search, dedup, serve, demo, eval, train, config.

Every expected failure (bad path, corrupt image, wrong flag, mismatched index) ends in a
one-line ``neardup: error: ...`` on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.parquet as pq

from encoders.base import RANK_MODES
from encoders.tta import TTA_MODES
from rayapp.config import Config, load_config
from rayapp.dedup_options import job_options
from rayapp.ingest import list_files
from rayapp.ingest import main as index_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="neardup")
def cli() -> None:
    """neardup: find copies and near-copies of images, at any scale."""


cli.add_command(index_command, name="index")


def _encoder(name: str | None, weights: str | None = None):
    from encoders.registry import get_encoder
    return get_encoder(name, weights=weights)


def _local_files(sources: tuple[str, ...]) -> list[dict]:
    rows = [r for s in sources for r in list_files(s)]
    if not rows:
        raise click.ClickException(f"no image files found in: {', '.join(sources)}")
    return rows


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--encoder", default=None, help="Encoder name (see `neardup encoders`).")
@click.option("--weights", default=None, help="Local weights file.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output Parquet file.")
@click.option("--errors", "errors_path", default=None, help="CSV of unreadable files (default OUT.errors.csv).")
@click.option("--batch-size", default=64, show_default=True)
def encode(paths, encoder, weights, out, errors_path, batch_size) -> None:
    """Encode images (files or folders, recursively) to Parquet: id, path, code, encoder."""
    from encoders.files import encode_files
    enc = _encoder(encoder, weights)
    rows = _local_files(paths)
    res = encode_files(enc, [r["path"] for r in rows], batch_size=batch_size)
    ids = {r["path"]: r["id"] for r in rows}
    table = pa.table({
        "id": pa.array([ids[p] for p in res.paths], pa.string()),
        "path": pa.array(res.paths, pa.string()),
        "code": pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(enc.code_bytes), len(res.paths), [None, pa.py_buffer(res.codes.tobytes())]),
        "encoder": pa.array([enc.name] * len(res.paths), pa.string()),
    })
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    errors_path = errors_path or str(Path(out).with_suffix("")) + ".errors.csv"
    if res.errors:
        import csv
        with open(errors_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "error"])
            w.writerows(res.errors)
    click.echo(f"encoded {len(res.paths)} images with {enc.name} ({enc.bits} bits) -> {out}"
               + (f"; {len(res.errors)} unreadable -> {errors_path}" if res.errors else ""))


def _index_config(index_dir: str, encoder: str | None, address: str | None,
                  config_path: str | None = None, **shards) -> Config:
    from rayapp.cluster import read_index_meta
    meta = read_index_meta(index_dir)
    if meta is None:
        raise click.ClickException(f"no index at {index_dir} (missing neardup.json); "
                                   "build one with `neardup index`")
    return load_config(config_path, overrides={
        "encoder": {"name": encoder or meta["encoder"]},
        "storage": {"index_dir": index_dir, **shards}})


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--index-dir", required=True, help="Index built by `neardup index`.")
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--radius", default=None, type=click.IntRange(0, 1024), help="Only matches within this Hamming distance.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query.")
@click.option("--address", default=None, help="Ray address of a running cluster (default: embedded).")
@click.option("--timeout", default=10.0, show_default=True, help="Per-shard timeout in seconds.")
@click.option("--tta", default=None, type=click.Choice(TTA_MODES),
              help="Also search the query's flipped/rotated variants, keeping each id's best distance "
                   "(default: encoder.tta from the config, flip_turns).")
@click.option("--rank", default=None, type=click.Choice(RANK_MODES),
              help="Order matches by the cosine of stored side vectors (vector), weighted Hamming "
                   "distance (the query's bit confidences), both deephash only, or plain Hamming "
                   "(default: encoder.rank from the config, vector).")
@click.option("--min-confidence", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Only matches at least this likely to be copies (calibrated precision).")
def search(images, index_dir, k, radius, as_json, address, timeout, tta, rank, min_confidence) -> None:
    """Find the stored images nearest to each query image."""
    from encoders.decode import load_image
    from rayapp.cluster import confidence_curves, ensure_shards, init_ray
    from rayapp.router import ShardRouter
    from rayapp.searcher import NeedsCalibration, Searcher, encode_query
    cfg = _index_config(index_dir, None, address)
    enc = _encoder(cfg.encoder.name, cfg.encoder.weights)
    init_ray(address)
    router = ShardRouter(ensure_shards(cfg, bits=enc.bits), timeout_s=timeout,
                         ref_views=len(cfg.storage.ref_views), ref_view_cost=cfg.query.ref_view_cost)
    searcher = Searcher(router, cfg.query, confidence_curves(cfg))
    failed = 0
    for path in images:
        try:
            query = encode_query(enc, load_image(path, max_pixels=cfg.encoder.max_pixels), cfg.query,
                                 rank, tta)
        except (OSError, ValueError) as exc:
            failed += 1
            click.echo(json.dumps({"query": path, "error": str(exc)}) if as_json
                       else f"{path}: error: {exc}", err=not as_json)
            continue
        try:
            answer = searcher.search(query, k, radius, True, min_confidence)
        except NeedsCalibration as exc:
            raise click.UsageError(str(exc)) from None
        _print_hits(path, answer, as_json)
    if failed:
        sys.exit(1)


def _print_hits(path: str, answer, as_json: bool) -> None:
    """One query's answer: a JSON line (``Hit.to_cli_json``) or a line per hit for people."""
    if as_json:
        click.echo(json.dumps({"query": path, "results": [h.to_cli_json() for h in answer.hits],
                               "partial": answer.partial}))
        return
    click.echo(f"{path}:" + (f" (partial: shards {answer.missing} did not answer)" if answer.partial else ""))
    for h in answer.hits:
        how = h.matched_as()
        conf = f"  {h.confidence:.4f}" if h.confidence is not None else ""
        click.echo(f"  {h.distance:4d}{conf}  {h.id}" + ("" if how == "original" else f"  (as {how})"))
    if not answer.hits:
        click.echo("  no matches")


@cli.command()
@click.argument("paths", nargs=-1)
@click.option("--index-dir", default=None, help="Deduplicate this index (else index PATHS into a temporary one).")
@job_options
@click.option("--encoder", default=None, help="With PATHS: the encoder (default: deephash).")
@click.option("--weights", default=None, help="With PATHS: a local weights file.")
def dedup(paths, index_dir, out_dir, min_confidence, views, overlap_check, radius, k, batch, encoder, weights,
          address, quiet) -> None:
    """Group the near-duplicates of an index, or of PATHS, into star groups with a copy to keep;
    writes Parquet, CSV and an HTML report. Resumable with --index-dir."""
    from rayapp import dedup as job
    from rayapp.cluster import ensure_shards, init_ray
    if bool(paths) == bool(index_dir):
        raise click.UsageError("give either PATHS or --index-dir")
    opts = job.DedupOptions(out_dir=out_dir, min_confidence=min_confidence, views=views, radius=radius,
                            k=k, batch=batch, progress=not quiet, overlap_check=overlap_check)
    if index_dir:
        cfg = _index_config(index_dir, encoder, address)
        init_ray(address)
        ensure_shards(cfg)
        report = job.run_dedup(cfg, opts)
    else:
        init_ray(address)
        report = job.dedup_paths(list(paths), opts, encoder, weights)
    job.print_groups(report)


@cli.command()
@click.option("--config", "config_path", default=None, help="YAML config (see serve.yaml).")
@click.option("--index-dir", default=None)
@click.option("--host", default=None)
@click.option("--port", default=None, type=int)
@click.option("--shards", "num_shards", default=None, type=int)
@click.option("--token", default=None, help="Bearer token required for writes.")
@click.option("--read-token", default=None, help="Bearer token required for reads (the write token works too).")
@click.option("--encoder", default=None)
@click.option("--address", default=None, help="Ray address of a running cluster (default: embedded).")
@click.option("--tta", default=None, type=click.Choice(TTA_MODES),
              help="Also search the query's flipped/rotated variants, keeping each id's best distance "
                   "(default: encoder.tta from the config).")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="Run the Ray dashboard with the embedded Ray.")
@click.option("--metrics-port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Export ray_neardup_* metrics (Prometheus) here with the embedded Ray; 0 = off.")
def serve(config_path, index_dir, host, port, num_shards, token, read_token, encoder, address, tta,
          dashboard, metrics_port) -> None:
    """Run the HTTP API (Ray Serve) over an index until SIGINT or SIGTERM."""
    from rayapp.cluster import init_ray, shutdown
    from rayapp.ingress import prepare as prepare_ingress
    from rayapp.lifecycle import run_server, stop_on_signals, wait_for_signal
    cfg = load_config(config_path, overrides={
        "encoder": {"name": encoder}, "query": {"tta": tta},
        "storage": {"index_dir": index_dir, "num_shards": num_shards},
        "serve": {"host": host, "port": port, "token": token, "read_token": read_token}})
    direct = prepare_ingress(cfg, address)
    urls = init_ray(address, dashboard=dashboard, metrics_port=metrics_port or None)
    stop = stop_on_signals()
    try:
        run_server(cfg, direct=direct)
        click.echo(f"neardup API on http://{cfg.serve.host}:{cfg.serve.port} "
                   f"(index {cfg.storage.index_dir}); Ctrl-C to stop")
        for name, url in urls.items():
            click.echo(f"{name}: {url}")
        wait_for_signal(stop)
    finally:
        shutdown()


@cli.command()
@click.option("--port", default=8000, show_default=True)
@click.option("--out", "out_dir", default="demo-out", show_default=True)
@click.option("--exit", "exit_after", is_flag=True, help="Exit after the example queries.")
def demo(port, out_dir, exit_after) -> None:
    """Index the bundled samples on an embedded Ray, serve HTTP, and query edited copies."""
    from rayapp.demo import run_demo
    run_demo(out_dir=out_dir, port=port, keep_serving=not exit_after)


PASSTHROUGH = {"context_settings": {"ignore_unknown_options": True, "allow_extra_args": True,
                                    "help_option_names": []}, "add_help_option": False}


@cli.command(**PASSTHROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args) -> None:
    """Train the deephash model (flags of `python -m encoders.train`; --help lists them)."""
    from encoders.train import main as train_main
    sys.exit(train_main(list(args)))


@cli.command(name="eval", **PASSTHROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def eval_cmd(args) -> None:
    """mAP@100, µAP, recall@1 and per-edit recall for each encoder, side by side (--help)."""
    from rayapp.eval_cli import main as eval_main
    sys.exit(eval_main(list(args)))


BENCH_MODULES = {"shard": "shard_bench", "serve": "serve_load", "breakdown": "query_breakdown",
                 "paste": "paste_finder", "big-photos": "big_photos", "ingress-floor": "ingress_floor"}


@cli.command(**PASSTHROUGH)
@click.argument("which", type=click.Choice(["shard", "chaos", "gpu", "rerank", "verify", "dedup", "soak", "serve",
                                            "breakdown", "paste", "big-photos", "fanout",
                                            "ingress-floor"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(which, args) -> None:
    """Benchmarks from a source checkout: `shard` (index kinds), `chaos` (SIGKILL shards), `gpu`
    (encoder and faiss-gpu throughput against the CPU), `rerank` (side-vector scoring), `verify`
    (spatial verification), `dedup` (the dedup job's quality and throughput), `soak` (a long mixed
    load against a real server), `serve` (open-loop load on a real server beside Ray Serve's own
    floor), `breakdown` (where one image query's time goes), `paste` (how often the query's
    crops hold a photo pasted into a picture), `big-photos` (a big photo's decode, views and
    keypoints at working size and at full size), `fanout` (the router's search fan-out to
    shard actors beside no-op actors, in process) or `ingress-floor` (the bare floor beside an
    empty FastAPI ingress: the noise in a ratio of single runs)."""
    import os
    import subprocess
    module = "bench." + BENCH_MODULES.get(which, which)
    if not (Path(os.getcwd()) / "bench" / f"{module.split('.')[1]}.py").is_file():
        raise click.ClickException("benchmarks run from a source checkout (the bench/ folder)")
    # run as its own program from the checkout: the product never imports bench
    sys.exit(subprocess.call([sys.executable, "-m", module, *args], cwd=os.getcwd()))


@cli.command(name="config")
@click.option("--config", "config_path", default=None, help="YAML config file (default $NEARDUP_CONFIG).")
@click.option("--all", "show_all", is_flag=True, help="Every setting, not only what differs from the defaults.")
def config_cmd(config_path, show_all) -> None:
    """Print the configuration that the file and NEARDUP_* environment give, as YAML: only
    what differs from the defaults (all a neardup.yaml needs), or every setting with --all."""
    import os
    import yaml
    cfg = load_config(config_path or os.environ.get("NEARDUP_CONFIG"))
    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False) if show_all else cfg.to_yaml(), nl=False)


@cli.command(name="encoders")
def encoders_cmd() -> None:
    """List the available encoders."""
    from encoders.registry import DEFAULT_ENCODER, list_encoders
    for name in list_encoders():
        click.echo(name + ("  (default)" if name == DEFAULT_ENCODER else ""))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning expected failures into a one-line error."""
    try:
        rv = cli.main(args=argv, prog_name="neardup", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (FileNotFoundError, ValueError, OSError, RuntimeError) as exc:
        click.echo(f"neardup: error: {exc}", err=True)
        sys.exit(1)
    if isinstance(rv, int) and rv:
        sys.exit(rv)


if __name__ == "__main__":
    main()
