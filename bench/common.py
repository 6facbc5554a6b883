"""Helpers shared by the benchmarks: machine description, load and memory probes, result files.

Everything here reads /proc and the environment directly (Linux); on other systems the probes
return None rather than failing, so a benchmark still runs and says what it could not measure.
"""
from __future__ import annotations

import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# machine and software
# ----------------------------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    text = _read("/proc/cpuinfo") or ""
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else (platform.processor() or "unknown")


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def total_ram_bytes() -> int | None:
    """MemTotal from /proc/meminfo."""
    return meminfo_bytes("MemTotal")


def meminfo_bytes(field: str) -> int | None:
    """A /proc/meminfo field (MemTotal, MemAvailable, ...) in bytes."""
    text = _read("/proc/meminfo") or ""
    m = re.search(rf"^{field}:\s*(\d+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def git_revision(root: Path = REPO_ROOT) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the repository the bench runs from."""
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": sha, "dirty": None if status is None else bool(status)}


def file_digests(paths: list[str], root: Path = REPO_ROOT) -> dict:
    """sha256 (first 16 hex) of source files, to pin the exact code a result came from when the
    working tree is dirty."""
    import hashlib
    out = {}
    for rel in paths:
        try:
            out[rel] = hashlib.sha256((root / rel).read_bytes()).hexdigest()[:16]
        except OSError:
            out[rel] = None
    return out


def gpu_info() -> dict:
    """What FAISS sees: number of GPUs and whether the GPU binary index exists."""
    try:
        import faiss
    except ImportError:
        return {"faiss_gpus": 0, "gpu_binary_flat": False}
    n = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    return {"faiss_gpus": n, "gpu_binary_flat": hasattr(faiss, "GpuIndexBinaryFlat")}


def machine_info() -> dict:
    """CPU, cores, RAM, OS and library versions, git revision and date: stamped into every result."""
    faiss_threads = None
    try:
        import faiss
        faiss_threads = int(faiss.omp_get_max_threads())
    except ImportError:
        pass
    return {
        "date": utc_now(),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": total_ram_bytes(),
        "ram_gb": round((total_ram_bytes() or 0) / 2 ** 30, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": _version("numpy"),
        "faiss": _version("faiss"),
        "pyarrow": _version("pyarrow"),
        "faiss_omp_threads": faiss_threads,
        "gpu": gpu_info(),
        "git": git_revision(),
    }


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d")


# ----------------------------------------------------------------------------------------------
# load and memory probes
# ----------------------------------------------------------------------------------------------

def loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _proc_cpu_ticks() -> dict[int, tuple[int, str]]:
    """pid -> (utime + stime ticks, command name) for every readable process."""
    out: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        stat = _read(f"/proc/{entry.name}/stat")
        if not stat:
            continue
        close = stat.rfind(")")
        fields = stat[close + 2:].split()
        try:
            out[int(entry.name)] = (int(fields[11]) + int(fields[12]), stat[stat.find("(") + 1:close])
        except (IndexError, ValueError):
            continue
    return out


def other_cpu_users(interval: float = 1.0, min_percent: float = 10.0) -> list[dict]:
    """Other processes using at least min_percent of a core over interval seconds (noise sources)."""
    before = _proc_cpu_ticks()
    time.sleep(interval)
    after = _proc_cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    me = os.getpid()
    users = []
    for pid, (ticks, name) in after.items():
        if pid == me or pid not in before:
            continue
        pct = 100.0 * (ticks - before[pid][0]) / hz / interval
        if pct >= min_percent:
            cmd = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()
            users.append({"pid": pid, "name": name, "cpu_percent": round(pct, 1), "cmd": cmd[:160]})
    return sorted(users, key=lambda u: -u["cpu_percent"])


def _status_kb(field: str) -> int | None:
    text = _read("/proc/self/status") or ""
    m = re.search(rf"^{field}:\s*(\d+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def rss_bytes() -> int | None:
    """Current resident set size of this process (VmRSS)."""
    return _status_kb("VmRSS")


def peak_rss_bytes() -> int | None:
    """Peak resident set size since start or the last reset_peak_rss() (VmHWM)."""
    return _status_kb("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def release_memory(collect: bool = True) -> None:
    """Collect garbage (cycles; slow with big heaps) and hand freed heap pages back to the OS, so
    that RSS deltas mean something."""
    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ----------------------------------------------------------------------------------------------
# result files
# ----------------------------------------------------------------------------------------------

def _jsonable(obj: Any) -> Any:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None:
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return None if not np.isfinite(obj) else float(obj)
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_json(path: Path, data: dict) -> Path:
    """Write JSON atomically (temp file + rename) so a killed run never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_jsonable, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def latency_percentiles(ms: list[float]) -> dict:
    """Latencies in ms -> ``{"p50_ms", "p99_ms"}``, rounded to microseconds."""
    import numpy as np
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def small_bench_args(prog: str, doc: str, entries: int, queries: int,
                     argv: list[str] | None) -> "Any":
    """The flags of a one-shard micro-benchmark: --entries, --queries, --out-dir."""
    import argparse
    ap = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    ap.add_argument("--entries", type=int, default=entries)
    ap.add_argument("--queries", type=int, default=queries)
    ap.add_argument("--out-dir", default=str(RESULTS_DIR))
    return ap.parse_args(argv)


def main_for(run: "Any") -> "Any":
    """A micro-benchmark's ``main(argv) -> 0`` (what ``neardup bench`` calls) from its
    ``run(argv) -> result path``."""
    def main(argv: list[str] | None = None) -> int:
        print(f"wrote {run(argv)}")
        return 0
    return main


def parse_count(text: str) -> int:
    """'100k', '2M', '1.5M', '1B', '250000' -> int."""
    t = str(text).strip().lower().replace("_", "")
    mult = {"k": 10 ** 3, "m": 10 ** 6, "b": 10 ** 9, "g": 10 ** 9}
    try:
        if t and t[-1] in mult:
            value = float(t[:-1]) * mult[t[-1]]
        else:
            value = float(t)
    except ValueError:
        raise ValueError(f"not a count: {text!r} (use e.g. 100k, 2M, 250000)") from None
    if value <= 0 or value != int(value):
        raise ValueError(f"not a positive whole count: {text!r}")
    return int(value)


def format_count(n: int) -> str:
    """1_000_000 -> '1M', 200_000 -> '200k', 1_500_000 -> '1.5M'."""
    for div, suffix in ((10 ** 9, "B"), (10 ** 6, "M"), (10 ** 3, "k")):
        if n >= div:
            v = n / div
            return f"{v:g}{suffix}"
    return str(n)


# ----------------------------------------------------------------------------------------------
# cost curves: least-squares fits with non-negative coefficients, chosen by relative error
# ----------------------------------------------------------------------------------------------

def _basis(model: str, n: "Any") -> "Any":
    import numpy as np
    n = np.asarray(n, dtype=np.float64)
    one = np.ones_like(n)
    if model == "linear":
        return np.stack([one, n], axis=1)
    if model == "nlogn":
        return np.stack([one, n * np.log2(n)], axis=1)
    if model == "log":
        return np.stack([one, np.log2(n)], axis=1)
    if model == "sqrt":
        return np.stack([one, np.sqrt(n)], axis=1)
    raise ValueError(f"unknown cost model {model!r}")


FIT_MODELS = ("linear", "nlogn", "log", "sqrt")
_FORMULAS = {"linear": "a + b*n", "nlogn": "a + b*n*log2(n)", "log": "a + b*log2(n)",
             "sqrt": "a + b*sqrt(n)"}


def _nnls2(A: "Any", y: "Any", w: "Any") -> "Any":
    """Weighted least squares for 2 coefficients, both >= 0 (tries the free fit, then each alone)."""
    import numpy as np
    Aw, yw = A * w[:, None], y * w
    coef, *_ = np.linalg.lstsq(Aw, yw, rcond=None)
    if (coef >= 0).all():
        return coef
    best, best_err = None, np.inf
    for j in range(2):
        c = np.zeros(2)
        denom = float(Aw[:, j] @ Aw[:, j])
        c[j] = max(0.0, float(Aw[:, j] @ yw) / denom) if denom else 0.0
        err = float(((Aw @ c - yw) ** 2).sum())
        if err < best_err:
            best, best_err = c, err
    return best


def fit_cost_curve(ns: list[int], ys: list[float], models: tuple[str, ...] = FIT_MODELS,
                   fallback: str = "linear") -> dict | None:
    """Fit y(n) with each model (least squares on relative error, coefficients >= 0); keep the best.

    With fewer than 3 points every two-parameter model fits exactly, so only the ``fallback`` model
    (the one theory expects; linear by default) is used and the fit is marked ``low_confidence``.
    Returns None without 2 points.
    """
    import numpy as np
    pts = [(float(n), float(y)) for n, y in zip(ns, ys) if y is not None and np.isfinite(y) and y > 0]
    if len({n for n, _ in pts}) < 2:
        return None
    n = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    candidates = models if len(set(n)) >= 3 else (fallback,)
    best = None
    for model in candidates:
        coef = _nnls2(_basis(model, n), y, 1.0 / y)
        pred = _basis(model, n) @ coef
        rel = float(np.sqrt(np.mean(((pred - y) / y) ** 2)))
        if best is None or rel < best["rel_rmse"] - 1e-9:
            best = {"model": model, "formula": _FORMULAS[model], "a": float(coef[0]), "b": float(coef[1]),
                    "rel_rmse": rel}
    best.update({"points": len(pts), "n_range": [int(n.min()), int(n.max())],
                 "low_confidence": len(set(n)) < 3, "models_tried": list(candidates)})
    return best


def eval_cost_curve(fit: dict, n: float) -> float:
    """Value of a fit from fit_cost_curve at n."""
    import numpy as np
    return float((_basis(fit["model"], np.array([float(n)])) @ np.array([fit["a"], fit["b"]]))[0])
