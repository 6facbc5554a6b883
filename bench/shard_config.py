"""What a shard benchmark run is made of: the targets, the index grids, the run's configuration.

Kept apart from the code that measures, so that the CLI, the runner and the report all read one
definition of a grid, a target and a configuration label.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench import common

BUCKETS = (4, 8, 12, 16)
TARGET_N = 10_000_000  # the targets below are for the default kind at this size (issue 4)
TARGETS = {"recall_at_10_le16": 0.99, "p99_ms": 1.0, "bytes_per_code": 64.0, "build_codes_per_s": 200_000}


@dataclass(frozen=True)
class BuildSpec:
    """One index build: kind + construction params, then one or more search-time variants."""

    kind: str
    params: dict = field(default_factory=dict)
    variants: tuple[dict, ...] = ({},)


GRIDS: dict[str, tuple[BuildSpec, ...]] = {
    "full": (
        BuildSpec("mihc"),  # auto geometry: 8 x 16 bits (1 flip) below 2^21 rows, then 6 x 21 (2 flips)
        BuildSpec("mihc", {"b": 16}),  # 8 x 16 bits, 1 flip, at every size
        BuildSpec("mihc", {"nhash": 6, "b": 20, "nflip": 2}),  # half the directory of 6 x 21
        BuildSpec("mih", {"nflip": 0}, ({}, {"nflip": 1}, {"nflip": 2})),
        BuildSpec("hnsw", {"M": 16}, ({"efSearch": 64}, {"efSearch": 128}, {"efSearch": 256})),
        BuildSpec("hnsw", {"M": 32}, ({"efSearch": 64}, {"efSearch": 128}, {"efSearch": 256})),
        BuildSpec("ivf", {"nlist": 1024, "nprobe": 16}, ({}, {"nprobe": 64}, {"nprobe": 256})),
        BuildSpec("flat"),
    ),
    "default": (BuildSpec("mihc"),),  # the default kind alone, e.g. for one very large size
    "quick": (
        BuildSpec("mihc"),
        BuildSpec("mih", {"nflip": 1}),
        BuildSpec("hnsw", {"M": 16}, ({"efSearch": 64}, {"efSearch": 128})),
        BuildSpec("ivf", {"nlist": 1024, "nprobe": 64}),
        BuildSpec("flat"),
    ),
}


@dataclass
class BenchConfig:
    """Everything a run depends on (stored in the result JSON under "params")."""

    sizes: list[int]
    bits: int = 128
    kinds: list[str] | None = None
    grid: str = "full"
    queries_per_bucket: int = 500
    latency_queries: int = 1000
    latency_reps: int = 3
    batch_size: int = 1000
    add_batch: int = 100_000
    k: int = 10
    seed: int = 0
    real_codes: str | None = None
    real_queries: str | None = None
    real_ground_truth: str | None = None
    gpu: bool = False
    max_size: int = 20_000_000
    max_build_seconds: float = 1800.0
    threads: int | None = None
    latency_threads: int = 1
    save_load: bool = True
    tmp_dir: str | None = None
    extrapolate_to: int = 200_000_000
    fanout_shards: int = 5
    out_dir: str = str(common.RESULTS_DIR)
    tag: str = "full"
    date: str = field(default_factory=common.today)


class BenchError(Exception):
    """A bad flag or input: printed as one line, exit status 2."""


def log(msg: str) -> None:
    """Print a timestamped progress line at once (a long run is watched as it goes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def label_of(kind: str, params: dict) -> str:
    """'hnsw(M=16,efSearch=64)': the one name of a configuration in results, fits and tables."""
    return kind + ("(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")" if params else "")


def table_name(date: str, tag: str, stem: str) -> str:
    """File name of the Markdown table: the full run's is dated only, the others carry their stem."""
    return f"shard_{date}_table.md" if tag == "full" else f"{stem}_table.md"
