"""Whose CPU was it: this benchmark's process tree (client, cluster, server) or other programs.

On a shared machine the load average cannot say whether a busy minute was the benchmark's own
server or someone else's tests. :class:`CpuShare` reads the machine's busy time (/proc/stat,
which also counts processes that exited meanwhile) and this process tree's (/proc/PID/stat)
over a window, so every step can report how much of the machine other programs took while it
ran. :func:`wait_drained` waits until the tree itself is nearly idle, so work a saturated step
left queued (cancelled requests still being answered) does not spill into the next step.
"""
from __future__ import annotations

import os
import time
from collections import defaultdict

HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_ticks() -> int:
    """Busy jiffies of all CPUs since boot (everything but idle and iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)


def tree_ticks(root: int | None = None) -> int:
    """utime + stime jiffies of ``root`` (this process) and every process below it."""
    root = os.getpid() if root is None else root
    parent, ticks = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        parent[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    children = defaultdict(list)
    for pid, ppid in parent.items():
        children[ppid].append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children[pid]
    return total


class CpuShare:
    """CPU used over a window, in percent of one core: by this process tree and by the rest."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.ours0 = time.perf_counter(), _machine_busy_ticks(), tree_ticks()

    def stop(self) -> dict:
        wall = max(1e-9, time.perf_counter() - self.t0)
        busy, ours = _machine_busy_ticks() - self.busy0, tree_ticks() - self.ours0
        pct = lambda ticks: round(100.0 * ticks / HZ / wall, 1)  # noqa: E731
        return {"ours_cpu_percent": pct(ours), "others_cpu_percent": pct(max(0, busy - ours))}


def tree_percent(window_s: float = 0.5) -> float:
    """CPU this process tree uses over the next ``window_s``, in percent of one core."""
    before = tree_ticks()
    time.sleep(window_s)
    return 100.0 * (tree_ticks() - before) / HZ / window_s


def wait_drained(max_percent: float, window_s: float = 0.5, timeout_s: float = 30.0) -> float:
    """Wait until this process tree uses under ``max_percent`` of a core over ``window_s``
    (the server has finished what it held; an idle cluster's own use plus a margin is a
    good threshold) or ``timeout_s`` passed -> seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s and tree_percent(window_s) >= max_percent:
        pass
    return round(time.perf_counter() - t0, 1)
