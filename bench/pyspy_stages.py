"""Where a served query's CPU goes, from py-spy samples of every server process, by stage.

py-spy samples the Python stacks of a running process from outside (no hook in the product):
:func:`record` attaches to each of this run's Serve and shard processes at once, and
:func:`attribute` sorts every sample into a stage of the query path by the frames on its stack
(:data:`RULES`, first match wins), so a stage's samples divided by the sampling rate and the
number of queries is its CPU time per query, in the process it ran in.

Stacks whose innermost frame is a wait (an event loop, a thread pool's queue, Ray's task loop)
are idle; py-spy cannot always tell a thread blocked in native code from a busy one, so
:data:`IDLE_LEAVES` names those waits explicitly. Native work an event loop does by itself
(uvloop's socket I/O) has no Python frame and counts as idle too, so the figures are a lower
bound of the CPU. What is neither a stage nor idle is left as ``serve/ray other``: Serve's
replica machinery, metrics and Ray's own bookkeeping.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

#: process role -> a fragment of its Ray process title
ROLES = {"proxy": "ray::ProxyActor", "ingress": "ray::ServeReplica:neardup:Ingress",
         "encoder": "ray::ServeReplica:neardup:Encoder", "shard": "RayShardActor"}

#: (stage, roles it runs in, frame fragments): a sample of a process of one of those roles belongs
#: to the first stage with a frame on its stack that contains one of the fragments
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("decode", ("encoder",), ("load_image (encoders/decode.py",)),
    ("keypoints", ("encoder",), ("encoders/keypoints.py",)),
    ("encode", ("encoder",), ("encode_vectors (", "encode_stacks (", "encoders/deephash.py",
                              "encoders/onnx_cpu.py")),
    ("views", ("encoder",), ("encoders/",)),
    ("shard search", ("shard",), ("ShardActor.search (shards/actor.py", "ShardActor._score (")),
    ("verification", ("shard",), ("ShardActor.verify (shards/actor.py", "shards/verify.py")),
    ("fan-out", ("ingress",), ("rayapp/shard_pool.py",)),
    ("serialisation", ("ingress",), ("serialize_response (", "jsonable_encoder (", "JSONResponse.render (",
                                     "to_json (rayapp/")),
    ("merge and rank", ("ingress",), ("rayapp/ranking.py", "rayapp/hits.py", "rayapp/router.py",
                                      "rayapp/searcher.py")),
    ("request parsing", ("ingress",), ("rayapp/http.py", "starlette/formparsers.py", "multipart/")),
    ("encoder hop", ("ingress",), ("_encoder_call (rayapp/serve.py", "DeploymentHandle.remote (",
                                   "serve/_private/router.py", "serve/_private/request_router")),
]
#: innermost frames that mean the thread is waiting, not working
IDLE_LEAVES = ("Worker.main_loop (", "Thread.run (threading.py", "_run_router_event_loop (",
               "_run_user_code_event_loop (", "_worker (concurrent/futures/thread.py", "sleep (",
               "wait (threading.py", "select (", "get (queue.py", "run_forever (", "_run_once (",
               "Server.main_loop (")
OTHER = "serve/ray other"
#: frames of the encoder's own code, wherever it runs (its network runs in a thread of its own)
ENCODER_FRAMES = ("rayapp/encoder_deployment.py", "encoders/deephash.py", "encoders/onnx_cpu.py")
IDLE = "idle"


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every process below ``root`` (the cluster this run started)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    children, args = defaultdict(list), {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            children[int(parts[1])].append(int(parts[0]))
            args[int(parts[0])] = parts[2]
    found, todo = {}, list(children[root])
    while todo:
        pid = todo.pop()
        found[pid] = args.get(pid, "")
        todo += children[pid]
    return found


def server_processes(root: int | None = None) -> dict[int, str]:
    """pid -> role (:data:`ROLES`) of the query path's processes below ``root`` (this process)."""
    procs = _descendants(os.getpid() if root is None else root)
    return {pid: role for pid, cmd in procs.items() for role, title in ROLES.items() if cmd.startswith("ray::")
            and title in cmd.split()[0]}


def py_spy() -> str:
    """The py-spy program beside this Python, or on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    found = str(here) if here.is_file() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy not found: pip install py-spy")
    return found


def record(pids: dict[int, str], seconds: float, rate: int, out_dir: Path) -> list[subprocess.Popen]:
    """Start py-spy on every pid (raw collapsed stacks, without pausing the process) -> the
    recorders; wait for them, then read ``out_dir/<role>-<pid>.txt``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)),
                              "--rate", str(rate), "--format", "raw", "--nonblocking", "--threads",
                              "-o", str(out_dir / f"{role}-{pid}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid, role in pids.items()]


def stage_of(stack: str, role: str) -> str:
    """The stage of one sampled stack (frames root first, ``;``-separated) in a process of ``role``."""
    frames = stack.split(";")[1:]  # the first entry names the thread
    if not frames or any(leaf in frames[-1] for leaf in IDLE_LEAVES):
        return IDLE
    if role == "proxy":  # Serve's HTTP proxy: parsing, routing to the ingress and back
        return "http proxy"
    if role == "ingress" and any(f in fr for fr in frames for f in ENCODER_FRAMES):
        role = "encoder"  # the ingress encodes itself (encoder.placement: ingress)
    for stage, roles, fragments in RULES:
        if role in roles and any(f in fr for fr in frames for f in fragments):
            return stage
    return OTHER


def attribute(out_dir: Path, rate: int, queries: int) -> dict:
    """CPU ms per query by role and stage from the recorded files, plus the samples seen."""
    ms: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    samples = 0
    for path in sorted(out_dir.glob("*-*.txt")):
        role = path.name.split("-")[0]
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            samples += int(count)
            stage = stage_of(stack, role)
            if stage != IDLE:
                ms[role][stage] += int(count) * 1000.0 / rate / max(1, queries)
    by_role = {role: {k: round(v, 2) for k, v in sorted(stages.items(), key=lambda kv: -kv[1])}
               for role, stages in ms.items()}
    by_stage: dict[str, float] = defaultdict(float)
    for stages in ms.values():
        for stage, v in stages.items():
            by_stage[stage] += v
    return {"cpu_ms_per_query_by_process": by_role,
            "cpu_ms_per_query_by_stage": {k: round(v, 2) for k, v in sorted(by_stage.items(), key=lambda kv: -kv[1])},
            "cpu_ms_per_query_total": round(sum(by_stage.values()), 2), "samples": samples}
