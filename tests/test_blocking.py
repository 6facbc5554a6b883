"""run_sync: the router's coroutines, waited for from synchronous code in any thread."""
from __future__ import annotations

import asyncio
import threading

import pytest

from rayapp.blocking import run_sync


async def _twice(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def _fails() -> None:
    raise ValueError("bad input")


def test_returns_the_result_and_raises_the_exception():
    assert run_sync(_twice(21)) == 42
    with pytest.raises(ValueError, match="bad input"):
        run_sync(_fails())


def test_works_inside_a_running_loop_and_from_many_threads():
    async def caller() -> int:  # a notebook cell or an async actor calling the sync API
        return run_sync(_twice(4))

    assert asyncio.run(caller()) == 8
    out: list[int] = []
    threads = [threading.Thread(target=lambda i=i: out.append(run_sync(_twice(i)))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == [2 * i for i in range(8)]


def test_refuses_to_deadlock_its_own_loop():
    async def nested() -> int:
        return run_sync(_twice(1))

    with pytest.raises(RuntimeError, match="own loop"):
        run_sync(nested())
