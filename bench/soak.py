"""Soak: a fixed rate of mixed searches, adds and deletes against a real `neardup serve` for N
minutes, with the RSS of every server process over time.

The server indexes nothing at start; the load adds photos (edited copies of the bundled
samples, under fresh ids), searches for them and deletes some, so the index, the WAL and the
id store all move. Every few seconds the resident memory of the server's process tree (the
CLI, Ray's workers, Serve's proxy and replicas, the shard actors) is sampled. The run fails when
total RSS at the end exceeds its level after warm-up by more than ``--max-growth``.

    python -m bench.soak --minutes 10 --rate 5
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import RESULTS_DIR, REPO_ROOT, latency_percentiles, machine_info, today, utc_now, write_json


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and every descendant (from /proc)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    children: dict[int, list[int]] = {}
    rss = {}
    for p, pp, r in rows:
        children.setdefault(pp, []).append(p)
        rss[p] = r * 1024
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def _images(n: int) -> list[bytes]:
    from PIL import Image, ImageOps
    photos = sorted((REPO_ROOT / "rayapp" / "samples").glob("*.jpg"))
    out = []
    for i in range(n):
        im = Image.open(photos[i % len(photos)]).convert("RGB")
        im = ImageOps.mirror(im) if i % 2 else im.rotate(3 * (i % 5))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80 - i % 20)
        out.append(buf.getvalue())
    return out


def _start(port: int, index: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "rayapp.cli", "serve", "--index-dir", str(index),
                             "--port", str(port), "--no-dashboard", "--metrics-port", "0"],
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def run(minutes: float, rate: float, port: int, warmup_s: float, max_growth: float) -> dict:
    index = Path(tempfile.mkdtemp(prefix="neardup-soak-")) / "index"
    proc = _start(port, index)
    images = _images(64)
    rng = np.random.default_rng(0)
    lat: dict[str, list[float]] = {"search": [], "add": [], "delete": []}
    errors: dict[str, int] = {}
    rss, live, next_id = [], [], 0
    t0 = time.time()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            i = 0
            while time.time() - t0 < minutes * 60:
                due = t0 + i / rate
                time.sleep(max(0.0, due - time.time()))  # open loop: a fixed schedule
                op = "add" if not live or rng.random() < 0.3 else "delete" if rng.random() < 0.15 else "search"
                data = images[int(rng.integers(0, len(images)))]
                start = time.perf_counter()
                if op == "add":
                    r = http.post("/v1/items", files={"file": ("a.jpg", data, "image/jpeg")},
                                  data={"id": f"soak-{next_id}"})
                    live.append(f"soak-{next_id}")
                    next_id += 1
                elif op == "delete":
                    r = http.delete(f"/v1/items/{live.pop(int(rng.integers(0, len(live))))}")
                else:
                    r = http.post("/v1/search", files={"file": ("q.jpg", data, "image/jpeg")}, data={"k": "10"})
                lat[op].append((time.perf_counter() - start) * 1000)
                if r.status_code >= 400:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                if i % max(1, int(rate * 5)) == 0:
                    rss.append((round(time.time() - t0, 1), _tree_rss(proc.pid)))
                i += 1
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    after = [b for t, b in rss if t >= warmup_s] or [b for _, b in rss]
    growth = (np.mean(after[-3:]) - after[0]) / after[0]
    return {"date": utc_now(), "machine": machine_info(), "minutes": minutes, "rate_per_s": rate,
            "requests": sum(len(v) for v in lat.values()), "errors": errors,
            "latency_ms": {k: latency_percentiles(v) for k, v in lat.items() if v},
            "rss_bytes": rss, "rss_growth_after_warmup": round(float(growth), 4),
            "max_growth": max_growth, "passed": bool(growth <= max_growth and not errors)}


def _plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t, b = zip(*result["rss_bytes"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, np.array(b) / 2**20)
    ax.set_xlabel("seconds")
    ax.set_ylabel("server RSS, MiB (all processes)")
    ax.set_title(f"soak: {result['rate_per_s']}/s mixed requests, growth {result['rss_growth_after_warmup']:+.1%}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=5.0, help="requests per second (open loop)")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS growth counts")
    ap.add_argument("--max-growth", type=float, default=0.10)
    ap.add_argument("--port", type=int, default=28456)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    result = run(args.minutes, args.rate, args.port, args.warmup, args.max_growth)
    out = Path(args.out) if args.out else RESULTS_DIR / f"soak_{today()}.json"
    write_json(out, result)
    _plot(result, out.with_suffix(".png"))
    print({k: result[k] for k in ("requests", "errors", "latency_ms", "rss_growth_after_warmup", "passed")})
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
