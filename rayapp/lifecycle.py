"""Process lifecycle of ``neardup serve``: start Serve on an (embedded) Ray, wait until
``/readyz`` says ready, then run until SIGINT or SIGTERM."""
from __future__ import annotations

import signal
import threading
import time

from ray import serve

from rayapp.config import Config
from rayapp.ingress import proxy_port
from rayapp.serve import APP_NAME, build_app


def run_server(cfg: Config, blocking: bool = False, address: str | None = None,
               direct: bool = False) -> str:
    """Serve ``cfg`` on host:port (starting an embedded Ray if none is running) -> base URL.

    Returns as soon as /readyz answers (the encoder and every shard have served a warm-up query). With ``blocking=True`` it then waits for SIGINT or
    SIGTERM and shuts Serve down before returning (the caller owns ``ray.shutdown()``).
    ``direct``: the Ingress replica itself listens on the port (``rayapp.ingress.prepare`` set
    that up before Ray started); Serve's proxy then takes another.
    """
    from rayapp.cluster import init_ray
    init_ray(address)
    serve.start(http_options={"host": cfg.serve.host, "port": proxy_port(cfg, direct)})
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
    url = f"http://{_connect_host(cfg.serve.host)}:{int(cfg.serve.port)}"
    _wait_healthy(url)
    if blocking:
        try:
            wait_for_signal()
        finally:
            serve.shutdown()
    return url


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    """Wait until /readyz says ready: the model is loaded and every shard has answered."""
    import httpx
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=30.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Serve did not become ready at {url} within {timeout_s:g}s")
        time.sleep(0.2)


def stop_on_signals() -> threading.Event:
    """Route SIGINT/SIGTERM to an Event (main thread only). Call it after ``ray.init``, which
    installs handlers of its own, and before the server is reachable, so no signal is lost."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    return stop


def wait_for_signal(stop: threading.Event | None = None) -> None:
    """Block until SIGINT or SIGTERM (or KeyboardInterrupt)."""
    stop = stop or stop_on_signals()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
