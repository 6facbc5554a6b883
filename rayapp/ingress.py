"""Where HTTP enters a ``neardup serve``: Serve's proxy actor, or the Ingress replica itself.

By default Serve runs an HTTP proxy actor that parses each request and hands it to an Ingress
replica over a Ray call. Ray Serve's *direct ingress* (``RAY_SERVE_ENABLE_DIRECT_INGRESS``) lets
the ingress replica run the HTTP server itself: one process and one Ray hop fewer per query,
and the proxy's parsing gone from the CPU (``bench/results/direct_ingress_*.json``). Serve
then gives each ingress replica a port of its own from a range and keeps a proxy on the head
node only, on a port of its own.

``serve.ingress``:

- ``proxy``: Serve's proxy on ``serve.port`` (a cluster behind a load balancer);
- ``direct``: the Ingress replica listens on ``serve.port`` itself;
- ``auto`` (default): direct where this process starts the embedded Ray and one Ingress
  replica answers, since each replica would get a port of its own; on a Ray started
  elsewhere, direct only where this process's environment already enables it (as the
  cluster's nodes must); otherwise the proxy.

Serve reads these settings from the environment of the processes Ray starts, so
:func:`prepare` must run before ``ray.init``; it returns the decision for
:func:`rayapp.lifecycle.run_server`.
"""
from __future__ import annotations

import os
import socket

import ray

from rayapp.config import Config

ENABLE = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
MIN_PORT = "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"
MAX_PORT = "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"
# Serve holds a direct-ingress replica this long at shutdown for external load balancers to
# notice; a single-node server has none, so it only delays Ctrl-C.
DRAIN = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
DRAIN_S = "1"


def ingress_replicas(cfg: Config) -> int:
    """How many Ingress replicas ``cfg`` runs (``rayapp.serve.build_app``): the encoder's
    replica count where the ingress encodes, else one. Where that count is one, where the
    encoder runs is not asked (before Ray starts, that question imports torch)."""
    n = int(cfg.encoder.num_replicas)
    if n == 1:
        return 1
    from rayapp.encoder_deployment import in_ingress
    return n if in_ingress(cfg) else 1


def _embedded(address: str | None) -> bool:
    """Whether this process is about to start Ray itself (so Ray's processes get its environment)."""
    return not (address or os.environ.get("RAY_ADDRESS")) and not ray.is_initialized()


def wants_direct(cfg: Config, address: str | None = None) -> bool:
    """Whether ``cfg`` is served by direct ingress when Ray is (or is not yet) running here."""
    mode = cfg.serve.ingress
    if mode != "auto":
        return mode == "direct"
    if not _embedded(address):  # a cluster's own setting, where its environment reached us too
        return os.environ.get(ENABLE) == "1"
    return int(cfg.serve.port) > 0 and ingress_replicas(cfg) == 1


def prepare(cfg: Config, address: str | None = None) -> bool:
    """Before ``ray.init``: set Serve's direct-ingress environment when :func:`wants_direct`
    (the replica's port range starts at ``serve.port``) -> whether it did. A port already in
    use is refused here, with its number, instead of by a replica that cannot bind it.

    Ray started elsewhere never sees this environment: ``direct`` on such a cluster needs its
    nodes started with it (``ray start`` under the same three variables), and is refused with
    that advice when this process was not given them either."""
    if not wants_direct(cfg, address):
        return False
    port = int(cfg.serve.port)
    if not _embedded(address):
        if os.environ.get(ENABLE) != "1" or os.environ.get(MIN_PORT) != str(port):
            raise RuntimeError(
                f"serve.ingress=direct on a running Ray cluster needs every node started with "
                f"{ENABLE}=1 {MIN_PORT}={port} {MAX_PORT}={port + ingress_replicas(cfg)} (and this "
                "process given the same); or use serve.ingress=proxy")
        return True
    _check_free(cfg.serve.host, port)
    os.environ.update({ENABLE: "1", MIN_PORT: str(port),
                       MAX_PORT: str(port + ingress_replicas(cfg)), DRAIN: DRAIN_S})
    return True


def proxy_port(cfg: Config, direct: bool) -> int:
    """The port Serve's proxy listens on: ``serve.port``, or with direct ingress the first free
    port from ``serve.port + 100`` (the head node's fallback proxy, not the API's address)."""
    from rayapp.cluster import free_port_from
    return free_port_from(int(cfg.serve.port) + 100) if direct else int(cfg.serve.port)


def mode() -> str:
    """How HTTP reaches the replica this runs in: "direct" or "proxy" (``/v1/status``)."""
    return "direct" if os.environ.get(ENABLE) == "1" else "proxy"


def _check_free(host: str, port: int) -> None:
    """Raise unless ``port`` can be listened on, as the HTTP server will (SO_REUSEADDR: the
    closing connections of a server stopped a moment ago do not hold it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "127.0.0.1", port))
        except OSError as exc:
            raise RuntimeError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
