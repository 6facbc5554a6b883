"""Soak: a fixed rate of mixed searches, adds and deletes against a real `neardup serve` for N
minutes, with the RSS of every server process over time.

The server indexes nothing at start; the load adds photos (edited copies of the bundled
samples, under fresh ids), searches for them and deletes some, so the index, the WAL and the
id store all move. Every few seconds the resident memory of the server's process tree (the
CLI, Ray's workers, Serve's proxy and replicas, the shard actors) is sampled, per process and
in total, with the load average. The run fails when total RSS at the end (mean of the last
three samples) exceeds its first sample after warm-up by more than ``--max-growth``, or when
any request fails (a status >= 400 or no answer).

    python -m bench.soak --minutes 10 --rate 5

The JSON (machine, git revision and changed files at start, date, figures, every RSS sample)
and a plot go to bench/results/soak_DATE.json and .png; the server's own output to
``--server-log``. The index is left in a temporary folder named in the JSON (``index_dir``), so
its shard WAL can be replayed by ``bench.soak_replay``.
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

from bench.common import (RESULTS_DIR, REPO_ROOT, latency_percentiles, loadavg, machine_info, today,
                          utc_now, write_json)


def _ps() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, resident bytes, short command) of every process."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss=,args="], capture_output=True, text=True).stdout
    procs = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 3:
            continue
        args = parts[3] if len(parts) > 3 else ""
        procs[int(parts[0])] = (int(parts[1]), int(parts[2]) * 1024, _short(args))
    return procs


def _short(args: str) -> str:
    """A readable name: Ray's proctitle (``ray::ShardActor.search``) or the program's base name,
    with ``-m module`` for Python."""
    words = args.split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0].split(".")[0]
    name = words[0].rsplit("/", 1)[-1]
    if name.startswith("python") and "-m" in words[:-1]:
        return f"{name} -m {words[words.index('-m') + 1]}"
    script = next((w for w in words[1:] if not w.startswith("-")), None)
    if name.startswith("python") and script:
        return f"{name} {script.rsplit('/', 1)[-1]}"
    return name


def tree_rss(pid: int, procs: dict[int, tuple[int, int, str]] | None = None) -> dict[int, tuple[int, str]]:
    """pid -> (resident bytes, short command) for ``pid`` and every descendant."""
    procs = _ps() if procs is None else procs
    children: dict[int, list[int]] = {}
    for p, (pp, _, _) in procs.items():
        children.setdefault(pp, []).append(p)
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in procs:
            out[p] = (procs[p][1], procs[p][2])
        todo += children.get(p, [])
    return out


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


def _start(port: int, index: Path, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "rayapp.cli", "serve", "--index-dir", str(index),
                                 "--port", str(port), "--no-dashboard", "--metrics-port", "0"],
                                cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before ready (see {log})")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"server did not become ready (see {log})")


def growth(rss: list[list], warmup_s: float) -> float:
    """(mean of the last three totals - first total after warm-up) / first total after warm-up."""
    after = [b for t, b in rss if t >= warmup_s] or [b for _, b in rss]
    return float((np.mean(after[-3:]) - after[0]) / after[0])


def _by_process(samples: list[dict], warmup_s: float) -> list[dict]:
    """Per process: RSS at the first sample after warm-up and at the end, biggest growth first."""
    first = next((s for s in samples if s["t"] >= warmup_s), samples[0])
    last = samples[-1]
    rows = []
    for pid, (b, name) in last["procs"].items():
        b0 = first["procs"].get(pid, (None, name))[0]
        rows.append({"pid": pid, "name": name, "rss_after_warmup_mb": None if b0 is None else round(b0 / 2**20, 1),
                     "rss_end_mb": round(b / 2**20, 1),
                     "growth_mb": None if b0 is None else round((b - b0) / 2**20, 1)})
    return sorted(rows, key=lambda r: -(r["growth_mb"] or 0))


IMAGES = 64  # edited copies of the bundled photos the load draws from


def _tree_state() -> dict:
    """The checkout the server runs from: files changed against HEAD (``git status``)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    return {"root": str(REPO_ROOT), "changed_files": out.stdout.split("\n")[:-1] if out.returncode == 0 else None}


def next_op(rng: np.random.Generator, live: int, images: int) -> tuple[str, int]:
    """The next request of the fixed mix (about 60% searches, 30% adds, 10% deletes) and which
    image it sends; a delete then draws which live id it removes. Seeded, so a run's sequence
    can be replayed (``bench.soak_replay`` maps shard WAL positions back to soak seconds)."""
    op = "add" if not live or rng.random() < 0.3 else "delete" if rng.random() < 0.15 else "search"
    return op, int(rng.integers(0, images))


def run(minutes: float, rate: float, port: int, warmup_s: float, max_growth: float, log: Path) -> dict:
    machine, tree = machine_info(), _tree_state()  # at start: the code the server loads
    index = Path(tempfile.mkdtemp(prefix="neardup-soak-")) / "index"
    proc = _start(port, index, log)
    images = _images(IMAGES)
    rng = np.random.default_rng(0)
    lat: dict[str, list[float]] = {"search": [], "add": [], "delete": []}
    errors: dict[str, int] = {}
    samples, live, next_id, late = [], [], 0, 0
    t0 = time.time()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            i = 0
            while time.time() - t0 < minutes * 60:
                due = t0 + i / rate
                late += time.time() > due + 1.0 / rate  # the schedule slipped by a whole slot
                time.sleep(max(0.0, due - time.time()))  # open loop: a fixed schedule
                op, pick = next_op(rng, len(live), len(images))
                data = images[pick]
                start = time.perf_counter()
                try:
                    if op == "add":
                        r = http.post("/v1/items", files={"file": ("a.jpg", data, "image/jpeg")},
                                      data={"id": f"soak-{next_id}"})
                        if r.status_code < 400:
                            live.append(f"soak-{next_id}")
                        next_id += 1
                    elif op == "delete":
                        r = http.delete(f"/v1/items/{live.pop(int(rng.integers(0, len(live))))}")
                    else:
                        r = http.post("/v1/search", files={"file": ("q.jpg", data, "image/jpeg")},
                                      data={"k": "10"})
                    if r.status_code >= 400:
                        errors[f"{op} {r.status_code}"] = errors.get(f"{op} {r.status_code}", 0) + 1
                except httpx.HTTPError as exc:
                    key = f"{op} {type(exc).__name__}"
                    errors[key] = errors.get(key, 0) + 1
                lat[op].append((time.perf_counter() - start) * 1000)
                if i % max(1, int(rate * 5)) == 0:
                    samples.append({"t": round(time.time() - t0, 1), "load": loadavg(), "procs": tree_rss(proc.pid)})
                i += 1
    finally:
        elapsed = time.time() - t0
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    rss = [[s["t"], sum(b for b, _ in s["procs"].values())] for s in samples]
    g = growth(rss, warmup_s)
    n = sum(len(v) for v in lat.values())
    return {"date": utc_now(), "machine": machine, "source_tree": tree, "index_dir": str(index),
            "server_log": str(log), "minutes": minutes, "rate_per_s": rate,
            "duration_s": round(elapsed, 1), "requests": n, "achieved_rate_per_s": round(n / elapsed, 3),
            "late_slots": late, "ops": {k: len(v) for k, v in lat.items()}, "live_items_at_end": len(live),
            "errors": errors, "latency_ms": {k: latency_percentiles(v) for k, v in lat.items() if v},
            "warmup_s": warmup_s, "rss_bytes": rss,
            "rss_mb": {"first": round(rss[0][1] / 2**20, 1),
                       "after_warmup": round(next((b for t, b in rss if t >= warmup_s), rss[0][1]) / 2**20, 1),
                       "end": round(rss[-1][1] / 2**20, 1), "max": round(max(b for _, b in rss) / 2**20, 1)},
            "rss_by_process": _by_process(samples, warmup_s),
            "rss_samples": [{"t": s["t"], "load": s["load"],
                             "mb": {f"{name}[{pid}]": round(b / 2**20, 1) for pid, (b, name) in s["procs"].items()}}
                            for s in samples],
            "rss_growth_after_warmup": round(g, 4), "max_growth": max_growth,
            "passed": bool(g <= max_growth and not errors)}


def plot(result: dict, path: Path) -> None:
    """Total server RSS over time (top) and, for the six processes that grew most, their change
    since the first sample after warm-up (bottom)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t, b = zip(*result["rss_bytes"])
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax.plot(t, np.array(b) / 2**20)
    ax.axvline(result["warmup_s"], color="grey", ls=":", lw=1)
    ax.set_ylabel("total RSS, MiB")
    ax.set_title(f"soak: {result['rate_per_s']}/s mixed requests for {result['minutes']:g} min, "
                 f"growth after warm-up {result['rss_growth_after_warmup']:+.1%}")
    for row in [r for r in result["rss_by_process"] if r["growth_mb"] is not None][:6]:
        key = f"{row['name']}[{row['pid']}]"
        pts = [(s["t"], s["mb"][key] - row["rss_after_warmup_mb"]) for s in result["rss_samples"] if key in s["mb"]]
        ax2.plot(*zip(*pts), label=f"{key} {row['rss_end_mb']:.0f} MiB at end")
    ax2.axvline(result["warmup_s"], color="grey", ls=":", lw=1)
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("change since warm-up, MiB")
    ax2.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=5.0, help="requests per second (open loop)")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS growth counts")
    ap.add_argument("--max-growth", type=float, default=0.10)
    ap.add_argument("--port", type=int, default=28456)
    ap.add_argument("--out", default=None)
    ap.add_argument("--server-log", default=None, help="the server's stdout and stderr (default: a temp file)")
    ap.add_argument("--note", action="append", default=[], help="a note stored in the JSON (repeatable)")
    args = ap.parse_args(argv)
    log = Path(args.server_log or tempfile.mkstemp(prefix="neardup-soak-", suffix=".log")[1])
    print(f"server log: {log}", flush=True)
    result = run(args.minutes, args.rate, args.port, args.warmup, args.max_growth, log)
    result["notes"] = args.note
    out = Path(args.out) if args.out else RESULTS_DIR / f"soak_{today()}.json"
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    print({k: result[k] for k in ("duration_s", "requests", "errors", "latency_ms", "rss_mb",
                                  "rss_growth_after_warmup", "passed")})
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
