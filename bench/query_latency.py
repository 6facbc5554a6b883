"""Sequential image-query latency over HTTP, against a baseline checkout in the same run.

Each side (this checkout and ``--baseline``, e.g. a ``git worktree`` of the previous revision)
indexes the same photos with ``neardup index``, serves them with ``neardup serve`` until
``/readyz`` says ready, and answers the same edited queries one at a time (multipart upload to
``/v1/search``, k=10) after a warm-up.
Sides alternate over ``--rounds`` so that drifting machine load hits both alike. The result is
P50/P95/P99 per side and their ratio to the baseline, and each round's first and tenth query
after ready (the warm-up queries, not in the percentiles; the tenth sends the first's image
again, so the two differ only in what the server had warmed), by the client's clock and by the
answer's ``took_ms``. The client opens its connection and encodes one body before the first
query, so its own start is not counted as the server's. With ``--unrelated DIR``, photos of
that folder (not indexed: queries with no copy stored, which verify deepest) are searched too,
interleaved with the copies and reported apart. ``--baseline-env KEY=VALUE`` sets the baseline
side's environment, so one checkout can be compared with itself under another setting. With
``--rates``, each server then takes open-loop load (``bench.open_loop``) by image at those rates
per second, the copies in turn, and reports what it answered and at what latency. With
``--by-code`` every query (and the load) is a search by hex code instead of an upload.

    python -m bench.query_latency --photos rayapp/samples --baseline ../neardup-prev --queries 200
    python -m bench.query_latency --baseline . --baseline-env NEARDUP_SERVE_INGRESS=proxy
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import RESULTS_DIR, REPO_ROOT, latency_percentiles, machine_info, today, utc_now, write_json


def _unrelated(folder: str | None, n: int) -> list[Path]:
    """Up to ``n`` photos of ``folder`` (none without one)."""
    if not folder:
        return []
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]


def _interleave(copies: list[Path], unrelated: list[Path]) -> tuple[list[Path], list[bool]]:
    """Copies and unrelated photos alternated (the rest of the longer list at the end), and
    which are unrelated."""
    out: list[tuple[Path, bool]] = []
    for i in range(max(len(copies), len(unrelated))):
        out += [(copies[i], False)] if i < len(copies) else []
        out += [(unrelated[i], True)] if i < len(unrelated) else []
    return [p for p, _ in out], [u for _, u in out]


def _env(repo: Path, extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": str(repo), "RAY_ADDRESS": "", **(extra or {})}


def _cli(repo: Path, *args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rayapp.cli", *args], cwd=repo, env=_env(repo, env),
                            **kwargs)


def _make_queries(photos: list[Path], out: Path, n: int) -> list[Path]:
    """``n`` edited copies (JPEG) of the photos: crops, flips, text, pads, colour and fades."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageOps
    rng = np.random.default_rng(0)
    edits = [lambda im: im.crop((im.width // 8, im.height // 8, im.width * 7 // 8, im.height * 7 // 8)),
             ImageOps.mirror, lambda im: ImageEnhance.Contrast(im).enhance(0.5),
             lambda im: ImageOps.expand(im, border=im.width // 6, fill=(240, 240, 240)),
             lambda im: Image.blend(im, Image.new("RGB", im.size, "white"), 0.5)]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        im = Image.open(photos[i % len(photos)]).convert("RGB")
        im = edits[int(rng.integers(0, len(edits)))](im)
        ImageDraw.Draw(im).text((10, 10), f"copy {i}", fill=(255, 0, 0))
        paths.append(out / f"q{i:04d}.jpg")
        im.save(paths[-1], quality=85)
    return paths


def _server_memory(pid: int) -> dict:
    """Resident bytes of the server (``neardup serve`` and every process below it: Ray's own,
    Serve's, the replicas, the shards), in all and by process title."""
    from bench.soak import tree_rss
    by_title: dict[str, int] = {}
    for rss, cmd in tree_rss(pid).values():
        title = cmd.split()[0] if cmd.startswith("ray::") else Path(cmd.split()[0]).name
        by_title[title] = by_title.get(title, 0) + rss
    return {"processes": len(tree_rss(pid)), "rss_bytes": sum(by_title.values()), "by_title": by_title}


def _warm_up_list(queries: list, warmup: int) -> list:
    """The warm-up queries: the first ``warmup``, except that the tenth repeats the first (the
    same image, so first and tenth compare the server's warmth, not two queries' costs)."""
    warm = list(queries[:warmup])
    if len(warm) >= 10:
        warm[9] = warm[0]
    return warm


def _request(query: Path, by_code: bool) -> dict:
    """The search request for one query, as ``httpx.Client.post`` keywords: the photo as a
    multipart upload, or (``by_code``) a JSON body with a 128-bit hex code derived from its
    bytes (a search by code costs the same whatever the code)."""
    data = query.read_bytes()
    if by_code:
        return {"json": {"code": hashlib.blake2b(data, digest_size=16).hexdigest(), "k": 10}}
    return {"files": {"file": data}, "data": {"k": "10"}}


def _warm_client(client: httpx.Client, url: str, request: dict) -> None:
    """The client's own first use, outside the timed queries: its connection to the server is
    opened (``/healthz``) and a request body is encoded once (httpx's lazy set-up), so the
    first query after ready times the server, not the client's start."""
    client.get(f"{url}/healthz").raise_for_status()
    client.build_request("POST", f"{url}/v1/search", **request).read()


def _serve_and_time(repo: Path, index: Path, port: int, queries: list[dict], warmup: int,
                    memory: list, env: dict | None = None, load: tuple = (),
                    loaded: list | None = None, took: list | None = None
                    ) -> tuple[list[float], list[float]]:
    """Serve ``index`` from ``repo``; once ``/readyz`` says ready, note the server's memory in
    ``memory``, time ``warmup`` queries (``_request``), then every query -> (the warm-up's ms,
    the timed ms); each answer's own ``took_ms`` is appended to ``took``.
    ``load`` = (rates, seconds, bodies): then open-loop steps, their figures appended to ``loaded``."""
    took = [] if took is None else took
    proc = _cli(repo, "serve", "--index-dir", str(index), "--port", str(port), env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{repo}: server did not come up on {port}")
        times = []
        with httpx.Client(timeout=30) as client:
            memory.append(_server_memory(proc.pid))
            _warm_client(client, url, queries[0])
            for q in _warm_up_list(queries, warmup) + queries:
                t0 = time.perf_counter()
                r = client.post(f"{url}/v1/search", **q)
                r.raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
                took.append(r.json()["took_ms"])
        if load:
            from bench.open_loop import run_step
            rates, seconds, bodies = load
            loaded.append([run_step(url, "/v1/search", bodies, rate, seconds) for rate in rates])
        return times[:warmup], times[warmup:]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.query_latency", description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(REPO_ROOT / "rayapp" / "samples"))
    ap.add_argument("--baseline", required=True, help="checkout of the baseline revision")
    ap.add_argument("--baseline-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the baseline side's processes (repeatable)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--port", type=int, default=28123)
    ap.add_argument("--unrelated", default=None, help="folder of photos not indexed, searched too")
    ap.add_argument("--rates", default="", help="open-loop queries/s after the timing, e.g. 30,40,50")
    ap.add_argument("--rate-seconds", type=float, default=10.0)
    ap.add_argument("--by-code", action="store_true",
                    help="search by hex code (JSON) instead of uploading each photo")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    # absolute: each side indexes from its own checkout
    photos = sorted(p.absolute() for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    sides = {"current": REPO_ROOT, "baseline": Path(args.baseline).resolve()}
    envs = {"current": {}, "baseline": dict(kv.split("=", 1) for kv in args.baseline_env)}
    work = Path(tempfile.mkdtemp(prefix="neardup-latency-"))
    copies = _make_queries(photos, work / "queries", args.queries)
    unrelated = _unrelated(args.unrelated, args.queries)
    queries, is_unrelated = _interleave(copies, unrelated)
    for name, repo in sides.items():
        if _cli(repo, "index", *map(str, photos), "--index-dir", str(work / name)).wait() != 0:
            raise SystemExit(f"{name} ({repo}): neardup index failed; its side would time an empty index")
    times: dict[str, list[float]] = {name: [] for name in sides}
    times_unrelated: dict[str, list[float]] = {name: [] for name in sides}
    first: dict[str, list[dict]] = {name: [] for name in sides}  # each round's first and tenth query
    memory: dict[str, list[dict]] = {name: [] for name in sides}  # each round's server, once ready
    loaded: dict[str, list[list[dict]]] = {name: [] for name in sides}  # each round's open-loop steps
    rates = [float(r) for r in args.rates.split(",") if r]
    request_of = {q: _request(q, args.by_code) for q in queries}  # the copies are among them
    bodies = [request_of[q] for q in copies]
    requests = [request_of[q] for q in queries]
    load = (rates, args.rate_seconds, bodies) if rates else ()
    for r in range(args.rounds):
        for name, repo in sides.items():
            took: list[float] = []
            warm, timed = _serve_and_time(repo, work / name, args.port + r, requests, args.warmup,
                                          memory[name], envs[name], load, loaded[name], took)
            times[name] += [t for t, u in zip(timed, is_unrelated) if not u]
            times_unrelated[name] += [t for t, u in zip(timed, is_unrelated) if u]
            first[name].append({"first_ms": round(warm[0], 1), "tenth_ms": round((warm + timed)[9], 1),
                                "first_took_ms": round(took[0], 1), "tenth_took_ms": round(took[9], 1)})
            print(name, latency_percentiles(times[name]), first[name][-1], flush=True)
    stats = {name: latency_percentiles(t) for name, t in times.items()}
    ratio = {k: round(stats["current"][k] / stats["baseline"][k], 3) for k in stats["current"]}
    result = {"date": utc_now(), "machine": machine_info(), "queries": args.queries, "rounds": args.rounds,
              "by": "code" if args.by_code else "image",
              "photos": len(photos), "sides": {k: str(v) for k, v in sides.items()},
              "environment": {k: v for k, v in envs.items() if v},
              "latency_ms": stats, "ratio_current_to_baseline": ratio,
              "first_and_tenth_query_after_ready": first, "server_memory_when_ready": memory}
    if rates:
        result[f"open_loop_by_{result['by']}"] = loaded
    if unrelated:
        result["unrelated_queries"] = len(unrelated)
        result["unrelated_latency_ms"] = {n: latency_percentiles(t) for n, t in times_unrelated.items()}
    out = Path(args.out) if args.out else RESULTS_DIR / f"query_latency_{today()}.json"
    write_json(out, result)
    print(result["latency_ms"], ratio)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
