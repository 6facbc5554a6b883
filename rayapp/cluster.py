"""Start or attach to Ray and place the shard actors: one per shard node, or N on one machine.

Placement: when the cluster has nodes with the custom resource ``{"shard": 1}`` each shard actor
asks for it, so each lands on its own shard node. Otherwise (a laptop, CI) ``num_shards`` actors
share the local node. Actors are named, detached and restartable, so Serve, ingest jobs and the
CLI all find the same shards by name, and Ray restarts a crashed one (it recovers from disk).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import ray
from ray.actor import ActorHandle

from rayapp.config import Config
from shards.actor import ShardActor

SHARD_RESOURCE = "shard"
INDEX_META = "neardup.json"


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
    """Attach to ``address`` (e.g. "auto"), or start an embedded local Ray when None."""
    if ray.is_initialized():
        return
    quiet_driver_logs()
    address = address or os.environ.get("RAY_ADDRESS")  # set by `ray job submit`
    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("log_to_driver", False)
    kwargs.setdefault("logging_level", "WARNING")
    if address:
        kwargs.pop("include_dashboard")
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


def quiet_driver_logs() -> None:
    """Keep the CLI's output readable: our own progress bars, Ray's warnings and errors only."""
    import logging
    from ray.data import DataContext
    for name in ("ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def shard_name(i: int) -> str:
    return f"neardup-shard-{i}"


def shard_dir(cfg: Config, i: int) -> str:
    """Each shard keeps its snapshot and WAL in ``index_dir/shard-<i>`` (node-local disk)."""
    return str(Path(cfg.shards.index_dir).expanduser().resolve() / f"shard-{i}")


def shard_nodes() -> int:
    """Number of alive nodes that offer the shard resource."""
    return sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(SHARD_RESOURCE))


def uses_shard_resource(cfg: Config) -> bool:
    mode = cfg.shards.placement
    return mode == "resource" or (mode == "auto" and shard_nodes() > 0)


def index_meta(cfg: Config, bits: int) -> dict:
    """Read or create ``index_dir/neardup.json``: encoder, bits and the shard count.

    The shard count is fixed when an index is created, because adds are routed by
    hash(id) mod shards: a later run must use the same count (a dead node must not
    silently re-route ids). A mismatched encoder or bit width is refused.
    """
    path = Path(cfg.shards.index_dir).expanduser() / INDEX_META
    want = {"encoder": cfg.encoder.name, "bits": bits}
    if path.is_file():
        have = json.loads(path.read_text())
        for key, value in want.items():
            if have.get(key) != value:
                raise ValueError(f"index at {path.parent} was built with {key}={have.get(key)!r}, "
                                 f"not {value!r}; use the same encoder or a new --index-dir")
        return have
    n = shard_nodes() if uses_shard_resource(cfg) else cfg.shards.num_shards
    meta = {**want, "num_shards": max(1, n), "index_kind": cfg.shards.index_kind}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path)
    return meta


def ensure_shards(cfg: Config, bits: int | None = None) -> list[ActorHandle]:
    """Get or create the named, detached, restartable shard actors. Idempotent."""
    bits = bits or cfg.shards.bits or _encoder_bits(cfg)
    meta = index_meta(cfg, bits)
    use_resource = uses_shard_resource(cfg)
    handles = []
    for i in range(meta["num_shards"]):
        opts = dict(name=shard_name(i), namespace=cfg.shards.namespace, lifetime="detached",
                    max_restarts=-1, max_task_retries=-1, max_concurrency=16,
                    get_if_exists=True, num_cpus=0)
        if use_resource:
            opts["resources"] = {SHARD_RESOURCE: 1}
        handles.append(ray.remote(ShardActor).options(**opts).remote(
            i, shard_dir(cfg, i), bits, cfg.shards.index_kind, cfg.shards.index_params,
            cfg.shards.snapshot_every))
    ray.get([h.ping.remote() for h in handles])
    return handles


def get_shards(cfg: Config) -> list[ActorHandle]:
    """Look up the existing shard actors by name (in order), without creating any."""
    handles = []
    i = 0
    while True:
        try:
            handles.append(ray.get_actor(shard_name(i), namespace=cfg.shards.namespace))
        except ValueError:
            return handles
        i += 1


def kill_shards(cfg: Config) -> None:
    """Kill the detached shard actors (their data stays on disk)."""
    for h in get_shards(cfg):
        ray.kill(h, no_restart=True)


def _encoder_bits(cfg: Config) -> int:
    from encoders.registry import get_encoder
    return get_encoder(cfg.encoder.name, weights=cfg.encoder.weights).bits
