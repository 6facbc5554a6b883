"""The soak bench's bookkeeping, without a server: process-tree RSS, names, growth and the plot
(the 10-minute run itself is in bench/results/soak_*.json)."""
from __future__ import annotations

import os

from bench import soak


def test_tree_rss_sums_a_process_and_its_descendants_only():
    procs = {10: (1, 100, "python -m rayapp.cli"), 11: (10, 50, "raylet"), 12: (11, 25, "ray::RayShardActor"),
             20: (1, 999, "other")}
    assert soak.tree_rss(10, procs) == {10: (100, "python -m rayapp.cli"), 11: (50, "raylet"),
                                        12: (25, "ray::RayShardActor")}
    assert os.getpid() in soak.tree_rss(os.getpid())  # the real ps: this process is found


def test_short_names():
    assert soak._short("ray::RayShardActor.search") == "ray::RayShardActor"
    assert soak._short("/v/bin/python -m rayapp.cli serve --port 1") == "python -m rayapp.cli"
    assert soak._short("/v/bin/python -u /v/ray/_private/log_monitor.py --x") == "python log_monitor.py"
    assert soak._short("/v/ray/core/src/ray/raylet/raylet --flag") == "raylet"


def test_growth_counts_from_the_first_sample_after_warmup():
    rss = [[0, 50], [30, 100], [60, 100], [90, 110], [120, 110], [150, 110]]
    assert soak.growth(rss, warmup_s=30) == 0.1
    assert soak.growth(rss, warmup_s=1000) == (110 - 50) / 50  # nothing after warm-up: all samples


def test_plot_writes_a_png(tmp_path):
    samples = [{"t": t, "load": [1.0, 1.0, 1.0], "procs": {1: (2**20 * (100 + t), "a"), 2: (2**20 * 50, "b")}}
               for t in (0, 5, 10, 15)]
    result = {"rate_per_s": 5.0, "minutes": 0.25, "warmup_s": 5, "rss_growth_after_warmup": 0.05,
              "rss_bytes": [[s["t"], sum(b for b, _ in s["procs"].values())] for s in samples],
              "rss_by_process": soak._by_process(samples, 5),
              "rss_samples": [{"t": s["t"], "mb": {f"{n}[{p}]": b / 2**20 for p, (b, n) in s["procs"].items()}}
                              for s in samples]}
    assert result["rss_by_process"][0] == {"pid": 1, "name": "a", "rss_after_warmup_mb": 105.0,
                                           "rss_end_mb": 115.0, "growth_mb": 10.0}
    soak.plot(result, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
