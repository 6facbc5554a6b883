"""Open-loop HTTP load: requests leave on a fixed schedule, whether or not earlier ones answered.

A closed-loop client (N workers, each waiting for its answer before sending the next) slows
down with the server and so hides queueing: it never offers more than the server absorbs. Here
request ``i`` of a step is due at ``start + i / rate``; its latency is counted from that due time,
so a late send (the client's own event loop falling behind) is charged too, not forgotten.

A step sends for ``seconds``, then waits up to ``grace_s`` for answers still out; whatever has
not answered by then is cancelled and counted as unfinished (an error). A step is *saturated*
when it achieved less than 90% of the offered rate or left requests unfinished: its
throughput is then what the server can do, not what was offered.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import httpx
import numpy as np

SATURATED_BELOW = 0.9   # achieved / offered under this: the server, not the schedule, set the pace
LATE_MS = 5.0           # a send this far behind its due time counts as late
CLIENT_BOUND = 0.05     # more late sends than this share: the client, not only the server, set the pace


@dataclass
class Outcome:
    """One request: when it was due and sent, how long its answer took from the due time, and
    what came back."""

    due: float
    sent_late_ms: float
    latency_ms: float | None = None
    status: int | None = None
    error: str | None = None
    partial: bool = False


async def _send(client: httpx.AsyncClient, path: str, body: dict, due: float) -> Outcome:
    out = Outcome(due=due, sent_late_ms=(time.perf_counter() - due) * 1000)
    try:
        r = await client.post(path, **body)
    except httpx.HTTPError as exc:
        out.error = type(exc).__name__
        return out
    out.latency_ms = (time.perf_counter() - due) * 1000
    out.status = r.status_code
    if r.status_code >= 400:
        out.error = f"http {r.status_code}"
    else:
        out.partial = bool(r.json().get("partial"))
    return out


async def _schedule(url: str, path: str, bodies: list[dict], rate: float, seconds: float,
                    grace_s: float) -> tuple[list[Outcome], int]:
    """Send on schedule; -> (finished outcomes, how many were still unanswered at the end)."""
    n = max(1, int(round(rate * seconds)))
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=seconds + grace_s + 5, limits=limits) as client:
        start = time.perf_counter() + 0.05
        tasks = []
        for i in range(n):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(_send(client, path, bodies[i % len(bodies)], due)))
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, start + seconds + grace_s - time.perf_counter()))
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    return [t.result() for t in done], len(pending)


def run_step(url: str, path: str, bodies: list[dict], rate: float, seconds: float,
             grace_s: float = 5.0) -> dict:
    """Offer ``rate`` requests/s of ``bodies`` (httpx ``post`` keyword arguments, used in turn) to
    ``url + path`` for ``seconds`` -> the step's figures (see :func:`summarise`), with this
    client's CPU use and the machine's 1-minute load at its end (is the client or another
    program part of what was measured?)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    outcomes, unfinished = asyncio.run(_schedule(url, path, bodies, rate, seconds, grace_s))
    cpu = (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - wall0)
    return {**summarise(outcomes, unfinished, rate), "client_cpu_percent": round(100 * cpu, 1),
            "load_1min": round(os.getloadavg()[0], 2)}


def client_bound(late_sends: int, sent: int) -> bool:
    """Whether so many sends left late that this client, not only the server, set the pace."""
    return late_sends > CLIENT_BOUND * max(1, sent)


def summarise(outcomes: list[Outcome], unfinished: int, rate: float) -> dict:
    """Latency percentiles of the answered requests (ms, from their due time), achieved
    throughput (answers without error per second, between the first and the last),
    errors by kind (unfinished included), partial answers, late sends (and whether there were so
    many that this client limited the step) and saturation."""
    ok = [o for o in outcomes if o.error is None]
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.error is not None:
            errors[o.error] = errors.get(o.error, 0) + 1
    if unfinished:
        errors["unfinished"] = unfinished
    done = sorted(o.due + o.latency_ms / 1000 for o in ok)
    # answers per second between the first and the last answer: the offered rate when the server
    # keeps up (whatever its latency), its capacity when it does not
    achieved = (len(done) - 1) / max(1e-9, done[-1] - done[0]) if len(done) > 1 else 0.0
    lat = np.array([o.latency_ms for o in ok]) if ok else None
    late = sum(o.sent_late_ms > LATE_MS for o in outcomes)
    pct = {f"p{q}_ms": (None if lat is None else round(float(np.percentile(lat, q)), 2)) for q in (50, 95, 99)}
    return {"offered_per_s": rate, "sent": len(outcomes) + unfinished, "ok": len(ok),
            "errors": errors, "error_count": sum(errors.values()),
            "partial": sum(o.partial for o in ok), **pct,
            "mean_ms": None if lat is None else round(float(lat.mean()), 2),
            "achieved_per_s": round(achieved, 2),
            "late_sends": late, "client_bound": client_bound(late, len(outcomes) + unfinished),
            "saturated": bool(achieved < SATURATED_BELOW * rate or unfinished > 0)}
