"""The shard actors as the router calls them: rounds of calls under one deadline, and probation
for a shard that failed.

A round (at most one call per shard) is awaited with one shared deadline; a shard that fails or
does not answer in time is reported, never raised, so a search can answer *partial* instead of
hanging or failing. A shard that failed is on probation: rounds skip it, answering partial at
once instead of waiting out the deadline every time and without queueing work on a dead or
restarting actor, until its ``ping`` probe answers. A handle whose actor died for good is
looked up again through the optional ``resolver`` (a shard re-created under the same name gets
a new handle).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, RayActorError

log = logging.getLogger(__name__)


def reason(exc: BaseException) -> str:
    """One-line cause of a Ray task failure (without the remote traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, ray.exceptions.GetTimeoutError)):
        return "timed out"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip(": ")


def client_error(exc: BaseException) -> ValueError | None:
    """A shard that rejected the input (ValueError) is the caller's fault, not an outage."""
    if isinstance(exc, RayActorError) or not isinstance(exc, ValueError):
        return None
    cause = getattr(exc, "cause", None)
    return ValueError(str(cause if isinstance(cause, ValueError) else exc))


class ShardPool:
    """Handles of the shard actors, indexed by shard id, with each one's health."""

    def __init__(self, handles: list[ActorHandle],
                 resolver: Callable[[int], ActorHandle | None] | None = None):
        self.handles = list(handles)
        self.resolver = resolver
        self._probes: dict[int, Any] = {}  # shard -> pending ping ObjectRef while on probation
        self._down: set[int] = set()       # shards last seen failing (for logging transitions)
        self._resolved_at: dict[int, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.handles)

    def read(self, i: int, method: str, *args) -> ray.ObjectRef:
        """A read call: not replayed after an actor restart (the caller has long timed out)."""
        return getattr(self.handles[i], method).options(max_task_retries=0).remote(*args)

    def write(self, i: int, method: str, *args) -> ray.ObjectRef:
        """A write call, replayed after an actor restart as the actor's options say (adds and
        removes are idempotent by id)."""
        return getattr(self.handles[i], method).remote(*args)

    async def available(self) -> tuple[list[int], dict[int, BaseException]]:
        """Shards to call now -> (indices, {shard skipped while on probation: reason})."""
        skipped: dict[int, BaseException] = {}
        with self._lock:
            for i, probe in list(self._probes.items()):
                ready, _ = ray.wait([probe], timeout=0)
                if not ready:
                    skipped[i] = TimeoutError("recovering (health probe pending)")
                    continue
                del self._probes[i]
                try:
                    ray.get(probe)
                    self._down.discard(i)
                    log.warning("shard %d answers again", i)
                except Exception as exc:  # noqa: BLE001 - still down; after_errors re-probes
                    skipped[i] = exc
        await self.after_errors(skipped)
        return [i for i in range(len(self)) if i not in skipped], skipped

    async def gather(self, refs: dict[int, Any],
                     timeout_s: float) -> tuple[dict[int, Any], dict[int, BaseException]]:
        """Await one round of calls, {shard: ObjectRef}, with one deadline -> (results,
        errors) keyed by shard; failed shards go on probation."""
        results, errors = {}, {}
        if refs:
            async def one(ref):
                return await ref

            tasks = {i: asyncio.ensure_future(one(ref)) for i, ref in refs.items()}
            await asyncio.wait(tasks.values(), timeout=timeout_s)
            for i, task in tasks.items():
                if not task.done():
                    task.cancel()
                    errors[i] = TimeoutError(f"no answer within {timeout_s:g}s")
                elif task.exception() is not None:
                    errors[i] = task.exception()
                else:
                    results[i] = task.result()
        await self.after_errors(errors)
        return results, errors

    async def after_errors(self, errors: dict[int, BaseException]) -> None:
        """Put the shards that failed on probation; a resolver may block on the GCS, so a dead
        handle is looked up again in a thread, off the event loop."""
        if self.resolver is not None and any(isinstance(e, ActorDiedError) for e in errors.values()):
            await asyncio.to_thread(self._on_probation, errors)
        else:
            self._on_probation(errors)

    def _on_probation(self, errors: dict[int, BaseException]) -> None:
        """Log newly failed shards, re-resolve handles that died for good, start probes."""
        for i, exc in errors.items():
            if client_error(exc) is not None:
                continue  # the shard is healthy; it refused the input
            with self._lock:
                if i in self._probes:
                    continue  # already on probation
                if i not in self._down:
                    self._down.add(i)
                    log.warning("shard %d did not answer: %s", i, reason(exc))
            if isinstance(exc, ActorDiedError):
                self._refresh(i)
            with self._lock:
                self._probes.setdefault(i, self.read(i, "ping"))

    def _refresh(self, i: int) -> None:
        """Look shard ``i`` up again (at most once a second) after its handle died."""
        now = time.monotonic()
        if self.resolver is None or now - self._resolved_at.get(i, -1e9) < 1.0:
            return
        self._resolved_at[i] = now
        try:
            handle = self.resolver(i)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not re-resolve shard %d: %s", i, reason(exc))
            return
        if handle is not None:
            self.handles[i] = handle
