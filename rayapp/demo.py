"""``neardup demo``: embedded Ray, index the bundled samples, serve HTTP, query edited copies.

Everything is real: Ray Data ingest into shard actors, Ray Serve over HTTP, and edits made
with the same transform suite that training and evaluation use.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import httpx
import numpy as np

SAMPLES = Path(__file__).parent / "samples"
HELD_OUT = 2            # the last samples are kept out of the index, to show honest non-matches
DEMO_EDITS = ["center_crop", "jpeg", "text_overlay", "downscale", "hflip", "rot90", "pad", "meme", "screenshot",
              "random_crop"]


def sample_files() -> list[Path]:
    """The bundled CC0 / public-domain photos (licences in samples/LICENSES.tsv)."""
    return sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def make_queries(files: list[Path], out: Path, seed: int = 0) -> list[tuple[Path, str, str | None]]:
    """Edited copies of some indexed samples plus the held-out ones: (query, edit, expected id)."""
    from encoders.augment import apply_family
    from encoders.decode import load_image
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    indexed, held = files[:-HELD_OUT], files[-HELD_OUT:]
    queries = []
    for i, edit in enumerate(DEMO_EDITS):
        src = indexed[(i * 5) % len(indexed)]
        q = out / f"{src.stem}.{edit}.jpg"
        apply_family(edit, load_image(src), rng).save(q, quality=90)
        queries.append((q, edit, src.name))
    for src in held:
        queries.append((src, "not indexed", None))
    return queries


def run_demo(out_dir: str = "demo-out", port: int = 8000, keep_serving: bool = True) -> None:
    from encoders.registry import get_encoder
    from rayapp.cluster import init_ray, shutdown
    from rayapp.config import load_config
    from rayapp.dedup import DedupOptions, run_dedup
    from rayapp.ingest import IngestOptions, run_ingest
    from rayapp.ingress import prepare as prepare_ingress
    from rayapp.lifecycle import run_server, stop_on_signals, wait_for_signal

    out = Path(out_dir).resolve()
    shutil.rmtree(out, ignore_errors=True)
    files = sample_files()
    staged = out / "samples"
    staged.mkdir(parents=True)
    for f in files[:-HELD_OUT]:
        shutil.copy(f, staged / f.name)
    cfg = load_config(overrides={"storage": {"index_dir": str(out / "index"), "num_shards": 2},
                                 "serve": {"port": port}})
    enc = get_encoder(cfg.encoder.name)
    click.secho(f"[1/4] starting an embedded Ray; encoder {enc.name} ({enc.bits} bits)", bold=True)
    direct = prepare_ingress(cfg)
    urls = init_ray(dashboard=True, metrics_port=8080)
    for name, url in urls.items():
        click.echo(f"      {name}: {url}")
    stop = stop_on_signals()
    try:
        click.secho(f"[2/4] indexing {len(files) - HELD_OUT} bundled samples with Ray Data", bold=True)
        rep = run_ingest(cfg, [str(staged)], IngestOptions(progress=True))
        click.echo(f"      indexed {rep.indexed} ({rep.errors} errors) in {rep.seconds:.1f}s")
        click.secho(f"[3/4] serving HTTP on http://{cfg.serve.host}:{port}", bold=True)
        run_server(cfg, direct=direct)
        _query_over_http(f"http://{cfg.serve.host}:{port}", make_queries(files, out / "queries"),
                         enc.default_radius)
        click.secho("[4/4] deduplicating samples + edited copies (a Ray job) into an HTML report", bold=True)
        _add_over_http(f"http://{cfg.serve.host}:{port}", sorted((out / "queries").iterdir()))
        dedup = run_dedup(cfg, DedupOptions(out_dir=str(out / "dedup"), progress=False))
        for n, g in enumerate(dedup.groups, 1):
            click.echo(f"      group {n}: " + ", ".join(g.ids))
        click.echo(f"      {len(dedup.groups)} duplicate groups (calibrated precision >= 0.99); "
                   f"report: {out / 'dedup' / 'report.html'}")
        base = f"http://{cfg.serve.host}:{port}"
        click.secho(f"\nAPI listening at {base}", fg="green", bold=True)
        click.echo(f"  curl {base}/v1/status\n  curl -F file=@{files[0]} '{base}/v1/search'")
        if keep_serving:
            click.echo("Ctrl-C to stop.")
            wait_for_signal(stop)
    finally:
        shutdown()


def _add_over_http(base: str, paths: list[Path]) -> None:
    """Store the edited copies in the served index too (POST /v1/items), with their file's
    path, so the dedup job reads them again and searches all their views (a mirrored or turned
    copy is found through its mirrored or turned view) and groups them with their originals."""
    with httpx.Client(base_url=base, timeout=60) as http:
        for path in paths:
            with open(path, "rb") as fh:
                http.post("/v1/items", files={"file": (path.name, fh, "image/jpeg")},
                          data={"id": path.name, "meta": json.dumps({"path": str(path)})}).raise_for_status()


MATCH_CONFIDENCE = 0.5  # the demo calls a hit a match from this calibrated precision on


def _query_over_http(base: str, queries: list, radius: int) -> None:
    """Each edited query over HTTP: its top match, distance, confidence and view, and whether
    that is right. A hit under MATCH_CONFIDENCE (without a calibrated curve: beyond ``radius``)
    counts as no match; a partial answer says so rather than calling it a miss."""
    from rayapp.hits import Hit
    click.echo(f"      {'query edit':<14} {'expected':<34} {'top match':<34} {'dist':>4} "
               f"{'conf':>6}  {'matched as':<28} verdict")
    with httpx.Client(base_url=base, timeout=60) as http:
        for path, edit, expected in queries:
            with open(path, "rb") as fh:
                r = http.post("/v1/search", files={"file": (path.name, fh, "image/jpeg")}, data={"k": "3"})
            r.raise_for_status()
            answer = r.json()
            hits = [h for h in map(Hit.from_json, answer["results"])
                    if (h.confidence >= MATCH_CONFIDENCE if h.confidence is not None else h.distance <= radius)]
            top = hits[0] if hits else None
            ok = (top is not None and top.id == expected) if expected else top is None
            if answer["partial"] and not ok:
                verdict = click.style(f"partial: shards {answer['missing_shards']} did not answer", fg="yellow")
            else:
                verdict = click.style("found" if expected else "no match (correct)", fg="green") if ok \
                    else click.style("missed" if expected else "false match", fg="red")
            conf = "" if top is None or top.confidence is None else f"{top.confidence:.4f}"
            view = top.matched_as() if top else ""
            click.echo(f"      {edit:<14} {expected or '-':<34} {top.id if top else '-':<34} "
                       f"{top.distance if top else '':>4} {conf:>6}  {view:<28} {verdict}")
