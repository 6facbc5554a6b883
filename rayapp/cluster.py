"""Start or attach to Ray and place the shard actors: one per shard node, or N on one machine.

Placement: when the cluster has nodes with the custom resource ``{"shard": 1}`` each shard actor
asks for it, so each lands on its own shard node. Otherwise (a laptop, CI) ``num_shards`` actors
share the local node. Actors are named, detached and restartable, so Serve, ingest jobs and the
CLI all find the same shards by name, and Ray restarts a crashed one (it recovers from disk).
When a shard node dies, its actor waits (RESTARTING) until a node with a free shard resource
joins, then reloads its snapshot and WAL from ``index_dir/shard-<i>`` on that node's disk;
meanwhile searches answer partial, naming it.

``start_local_cluster`` simulates a multi-node cluster on one machine (tests, chaos bench).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from ray.actor import ActorHandle

from rayapp import metrics
from rayapp.config import Config
from shards.actor import ShardActor
from shards.verify import KEYPOINT_BYTES

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster

log = logging.getLogger(__name__)

SHARD_RESOURCE = "shard"
INDEX_META = "neardup.json"


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False,
             metrics_port: int | None = None, **kwargs) -> dict:
    """Attach to ``address`` (e.g. "auto") or ``$RAY_ADDRESS`` and say so in one line, or start
    an embedded local Ray when neither is given: ``address="local"``, so a leftover record of a
    dead cluster (``/tmp/ray/ray_current_cluster``) is never joined. An embedded Ray can run the
    dashboard and export metrics (Prometheus text) on ``metrics_port`` (the next free port when
    it is taken). Returns the URLs it serves: ``{"dashboard": ..., "metrics": ...}``."""
    if ray.is_initialized():
        return {}
    quiet_driver_logs()
    address = address or os.environ.get("RAY_ADDRESS")  # set by `ray job submit`
    kwargs.setdefault("log_to_driver", False)
    kwargs.setdefault("logging_level", "WARNING")
    if address:
        ray.init(address=address, **kwargs)
        logging.getLogger("neardup").warning("neardup: attached to the Ray cluster at %s", address)
        return {}
    if metrics_port:
        kwargs["_metrics_export_port"] = metrics_port = free_port_from(metrics_port)
    ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, **kwargs)
    urls = {"dashboard": f"http://{ctx.dashboard_url}"} if dashboard and ctx.dashboard_url else {}
    return {**urls, **({"metrics": f"http://127.0.0.1:{metrics_port}/metrics"} if metrics_port else {})}


def free_port_from(port: int, tries: int = 50) -> int:
    """``port`` if nothing listens on it, else the next free one above it."""
    import socket
    for p in range(port, port + tries):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue
    raise RuntimeError(f"no free port in {port}-{port + tries - 1}")


def quiet_driver_logs() -> None:
    """Keep the CLI's output readable: our own progress bars, Ray's warnings and errors only."""
    from ray.data import DataContext
    for name in ("ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # known and harmless here: the notice that an embedded Ray uses token auth (it should), and
    # that Ray Data's own progress bars are off (ours are on)
    for name in ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def shard_name(i: int) -> str:
    return f"neardup-shard-{i}"


def shard_dir(cfg: Config, i: int) -> str:
    """Each shard keeps its snapshot and WAL in ``index_dir/shard-<i>`` (node-local disk)."""
    return str(Path(cfg.storage.index_dir).expanduser().resolve() / f"shard-{i}")


def shard_nodes() -> int:
    """Number of alive nodes that offer the shard resource."""
    return sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(SHARD_RESOURCE))


def uses_shard_resource(cfg: Config) -> bool:
    mode = cfg.storage.placement
    return mode == "resource" or (mode == "auto" and shard_nodes() > 0)


def read_index_meta(index_dir: str | Path) -> dict | None:
    """An index's ``neardup.json`` (encoder, bits, widths, shard count), or None where there is
    none. One that cannot be read is a ValueError naming it, never None: a damaged index must
    not look like a missing one, which ``index_meta`` would create afresh over it."""
    path = Path(index_dir).expanduser() / INDEX_META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable index metadata ({exc})") from None


def known_bits(cfg: Config) -> int | None:
    """The code width from the config or an existing index's metadata, so a caller (the Serve
    ingress) need not load the encoder to learn it; None where neither says, or the metadata
    cannot be read (``index_meta`` reports that)."""
    if cfg.storage.bits:
        return cfg.storage.bits
    try:
        return (read_index_meta(cfg.storage.index_dir) or {}).get("bits")
    except ValueError:
        return None


def index_meta(cfg: Config, bits: int, vector_bytes: int | None = None) -> dict:
    """Read or create ``index_dir/neardup.json``: encoder, bits, side-vector width and the
    shard count.

    A new index stores the encoder's side vectors (``vector_bytes``) when ``shards.vectors`` is
    on, each image's keypoints (``keypoint_bytes``, ``shards.verify``) when
    ``shards.keypoints`` is on, and its ``storage.ref_views``; an existing one keeps what it was
    built with: its recorded views replace the configuration's (``_adopt_views``), so every
    command on one index stores and searches the same views.

    The shard count is fixed when an index is created, because adds are routed by
    hash(id) mod shards: a later run must use the same count (a dead node must not
    silently re-route ids). A mismatched encoder or bit width is refused.
    """
    path = Path(cfg.storage.index_dir).expanduser() / INDEX_META
    want = {"encoder": cfg.encoder.name, "bits": bits}
    have = read_index_meta(path.parent)
    if have is not None:
        for key, value in want.items():
            if have.get(key) != value:
                raise ValueError(f"index at {path.parent} was built with {key}={have.get(key)!r}, "
                                 f"not {value!r}; use the same encoder or a new --index-dir")
        _check_model(have, cfg, path.parent)
        _adopt_views(have, cfg, path.parent)
        return {"vector_bytes": 0, "keypoint_bytes": 0, **have}  # older indexes have neither
    # Another node may have created this index: its named shard actors are cluster-wide.
    n = len(get_shards(cfg)) or (shard_nodes() if uses_shard_resource(cfg)
                                 else cfg.storage.num_shards)
    if vector_bytes is None:
        vector_bytes = _encoder_widths(cfg)[1]
    meta = {**want, "model": model_id(cfg),
            "vector_bytes": int(vector_bytes) if cfg.storage.vectors else 0,
            "keypoint_bytes": KEYPOINT_BYTES if cfg.storage.keypoints else 0,
            "num_shards": max(1, n), "index_kind": cfg.storage.index_kind,
            "ref_views": list(cfg.storage.ref_views)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path)
    return meta


def adopt_index_views(cfg: Config) -> Config:
    """``cfg`` with the stored views its existing index records, if any (``index_meta``): for
    processes that encode for an index before opening its shards (a Serve app's encoder)."""
    try:
        have = read_index_meta(cfg.storage.index_dir)
    except ValueError:
        return cfg  # index_meta reports an unreadable index when the shards open
    if have is not None:
        _adopt_views(have, cfg, Path(cfg.storage.index_dir))
    return cfg


def _adopt_views(have: dict, cfg: Config, where: Path) -> None:
    """Set ``cfg.storage.ref_views`` to the views an index records (an index built before they
    were recorded keeps the configuration's)."""
    views = have.get("ref_views")
    if views is not None and list(views) != list(cfg.storage.ref_views):
        log.warning("index at %s stores the views %s; using them, not the configuration's %s",
                    where, views, list(cfg.storage.ref_views))
        cfg.storage.ref_views = list(views)


def model_id(cfg: Config) -> str:
    """Which model made an index's codes: the encoder name, and for deephash its weights' hash."""
    if cfg.encoder.name != "deephash":
        return cfg.encoder.name
    from encoders.weights_files import model_id as deephash_id
    return deephash_id(cfg.encoder.weights)


def confidence_curves(cfg: Config) -> dict:
    """The confidence curves fitted for this encoder's model (``encoder.calibration``, else the
    bundled file); empty for a model none were fitted for, whose hits then carry no confidence."""
    from encoders import calibration
    path = cfg.encoder.calibration
    return calibration.load(model_id(cfg), *([Path(path)] if path else []))


def _check_model(have: dict, cfg: Config, where: Path) -> None:
    """Refuse to mix codes of two models: an index built before ``model`` was recorded holds the
    previous bundled deephash's codes."""
    stored = have.get("model") or have.get("encoder")
    if not have.get("model") and stored == "deephash":
        from encoders.weights_files import LEGACY_MODEL_ID
        stored = LEGACY_MODEL_ID
    current = model_id(cfg)
    if stored != current:
        raise ValueError(f"index at {where} holds codes of model {stored}, but the encoder is {current}: "
                         "codes of different models are not comparable; re-index into a new --index-dir, "
                         "or pass --weights with the weights it was built with")


class RayShardActor(ShardActor):
    """ShardActor as a Ray actor: reports WAL fsync latency, code count and memory as metrics."""

    def __init__(self, shard_id: int, *args, **kwargs) -> None:
        self.fsync_observer = partial(metrics.observe_wal_fsync, int(shard_id))
        super().__init__(shard_id, *args, **kwargs)
        self._publish_stats()
        threading.Thread(target=self._stats_loop, name="shard-metrics", daemon=True).start()

    def _publish_stats(self) -> None:
        st = self.stats()
        metrics.set_shard_stats(self.shard_id, st["codes"], st["memory_bytes"])

    def _stats_loop(self) -> None:
        """Publish every half export interval (``metrics.gauge_refresh_s``): each export Ray
        makes shows the count as it is, whatever interval the cluster is configured with."""
        while True:
            time.sleep(metrics.gauge_refresh_s())
            try:
                self._publish_stats()
            except Exception as exc:  # noqa: BLE001 - metrics must never take a shard down
                log.warning("shard %d: could not publish metrics: %s", self.shard_id, exc)


def ensure_shards(cfg: Config, bits: int | None = None, wait_s: float | None = 120.0,
                  vector_bytes: int | None = None) -> list[ActorHandle]:
    """Get or create the named, detached, restartable shard actors. Idempotent.

    Waits up to ``wait_s`` (None: forever) for each shard to answer. A shard still pending
    after that (e.g. its node is down and no node with a free ``shard`` resource exists) is
    logged and returned anyway: the router reports it as missing until it comes up. A shard
    that failed to start (e.g. a bits mismatch on disk) raises.
    """
    bits = bits or cfg.storage.bits or _encoder_widths(cfg)[0]
    meta = index_meta(cfg, bits, vector_bytes)
    use_resource = uses_shard_resource(cfg)
    handles = []
    for i in range(meta["num_shards"]):
        opts = dict(name=shard_name(i), namespace=cfg.storage.namespace, lifetime="detached",
                    max_restarts=-1, max_task_retries=-1, max_concurrency=16,
                    get_if_exists=True, num_cpus=0)
        if use_resource:
            opts["resources"] = {SHARD_RESOURCE: 1}
        handles.append(ray.remote(RayShardActor).options(**opts).remote(
            i, shard_dir(cfg, i), bits, cfg.storage.index_kind, cfg.storage.index_params,
            cfg.storage.snapshot_every, meta["vector_bytes"], meta["keypoint_bytes"]))
    refs = [h.ping.remote() for h in handles]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
    ray.get(ready)  # raises if a shard could not start
    done = set(ready)
    pending = [i for i, ref in enumerate(refs) if ref not in done]
    if pending:
        log.warning("shard(s) %s not up after %ss (%s); searches answer partial until they are",
                    pending, wait_s, "waiting for a node with a free 'shard' resource"
                    if use_resource else "still starting")
    return handles


def get_shards(cfg: Config) -> list[ActorHandle]:
    """Look up the existing shard actors by name (in order), without creating any."""
    handles = []
    i = 0
    while True:
        try:
            handles.append(ray.get_actor(shard_name(i), namespace=cfg.storage.namespace))
        except ValueError:
            return handles
        i += 1


def kill_shards(cfg: Config) -> None:
    """Kill the detached shard actors (their data stays on disk)."""
    for h in get_shards(cfg):
        ray.kill(h, no_restart=True)


def _encoder_widths(cfg: Config) -> tuple[int, int]:
    """The configured encoder's (bits, side-vector bytes); loads it."""
    from encoders.registry import get_encoder
    enc = get_encoder(cfg.encoder.name, weights=cfg.encoder.weights)
    return enc.bits, enc.vector_bytes


# ---------------------------------------------------------------- simulated cluster (one machine)

def start_local_cluster(shard_nodes: int = 3, head_cpus: int = 2,
                        metrics_export_port: int | None = None,
                        namespace: str | None = None) -> "Cluster":
    """Start a multi-node Ray cluster on this machine and connect this process to it.

    A CPU head (``head_cpus``) plus ``shard_nodes`` worker nodes that each offer
    ``{"shard": 1}`` and no CPUs, like the shard nodes of cluster.yaml. For tests, the chaos
    bench and trying failure handling; stop it with :func:`stop_local_cluster`.
    """
    from ray._common.utils import reset_ray_address
    from ray.cluster_utils import Cluster

    head = {"num_cpus": head_cpus, "include_dashboard": False}
    if metrics_export_port:
        head["metrics_export_port"] = int(metrics_export_port)
    cluster = Cluster(initialize_head=True, head_node_args=head)
    # Cluster records itself as "the" local cluster, which a bare ray.init() elsewhere on this
    # machine would then join: undo that, we connect by explicit address.
    reset_ray_address()
    try:
        for _ in range(shard_nodes):
            add_shard_node(cluster)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=namespace, log_to_driver=False,
                 logging_level="WARNING")
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def add_shard_node(cluster: "Cluster", **node_args):
    """Add a simulated shard node (``{"shard": 1}``, no CPUs) -> its ``ray._private.node.Node``."""
    node_args.setdefault("num_cpus", 0)
    node_args.setdefault("resources", {SHARD_RESOURCE: 1})
    return cluster.add_node(**node_args)


def stop_local_cluster(cluster: "Cluster") -> None:
    """Disconnect and stop every node of a cluster from :func:`start_local_cluster`."""
    try:
        ray.shutdown()
    finally:
        cluster.shutdown()


def shutdown() -> None:
    """Stop Serve and the embedded Ray cleanly (leaves no Ray processes behind)."""
    import ray
    from ray import serve as ray_serve
    try:
        ray_serve.shutdown()
    finally:
        ray.shutdown()


def status_row(stats: dict) -> dict:
    """A shard's row in ``/v1/status`` from its ``stats()`` answer (or the router's stand-in
    for one that did not answer): id, node, pid, count of images, stored reference views,
    memory, keypoint blob bytes on disk, index kind, state, and the error if any."""
    row = {"id": stats.get("shard_id"), "node": stats.get("node_id"), "pid": stats.get("pid"),
           "count": stats.get("count"), "views": stats.get("views"),
           "memory_bytes": stats.get("memory_bytes"), "keypoint_file_bytes": stats.get("keypoint_file_bytes"),
           "index_kind": stats.get("index_kind"), "state": stats.get("state", "ready")}
    return {**row, "error": stats["error"]} if "error" in stats else row
