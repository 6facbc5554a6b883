"""Run coroutines to their end from synchronous code: the CLI, ingest's writers, jobs, tests.

The router and the Searcher are written once, as coroutines, for Serve's event loop; their
synchronous entry points hand the coroutine to :func:`run_sync`. It runs on one background
event loop per process, started on first use, rather than ``asyncio.run`` per call: that also
works where the calling thread already runs a loop (a notebook, an async Ray actor), and no
loop is made and torn down per call.
"""
from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_loop_pid: int | None = None  # a forked child inherits the loop but not its thread


def _background_loop() -> asyncio.AbstractEventLoop:
    """This process's background loop, started in a daemon thread on first use."""
    global _loop, _thread, _loop_pid
    with _lock:
        if _loop is None or _loop_pid != os.getpid():
            _loop, _loop_pid = asyncio.new_event_loop(), os.getpid()
            _thread = threading.Thread(target=_loop.run_forever, name="neardup-run-sync", daemon=True)
            _thread.start()
        return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and return its result, or raise its exception, in
    the calling thread. An interrupt in the caller (Ctrl-C) cancels the coroutine too."""
    loop = _background_loop()
    if threading.current_thread() is _thread:
        coro.close()  # waiting here would block the loop the coroutine needs: a deadlock
        raise RuntimeError("run_sync called from a coroutine on its own loop; await it instead")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise
