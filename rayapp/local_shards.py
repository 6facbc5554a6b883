"""Shards in this process, searched through the real router: for eval and tests, no Ray cluster.

:class:`LocalPool` answers the calls :class:`rayapp.router.ShardRouter` makes
(``read``/``write``/``available``/``gather``, as :class:`rayapp.shard_pool.ShardPool` does for
Ray actors) by calling plain ``shards.actor.ShardActor`` objects, so routing, the merge, the
folding of stored views and verification stay the router's, written once. A call runs when it
is made; a shard that raises is reported as that shard's error, as a failed actor would be.
"""
from __future__ import annotations

from typing import Any

from encoders.tta import REF_VIEW_COST
from rayapp.router import ShardRouter
from shards.actor import ShardActor


class _Done:
    """A call already made: its result, or the exception it raised."""

    def __init__(self, result: Any = None, error: BaseException | None = None):
        self.result, self.error = result, error


class LocalPool:
    """The ``ShardPool`` protocol over in-process shard objects, indexed by shard id."""

    def __init__(self, shards: list[ShardActor]):
        self.handles = list(shards)

    def __len__(self) -> int:
        return len(self.handles)

    def read(self, i: int, method: str, *args) -> _Done:
        """Call ``method`` on shard ``i`` now."""
        try:
            return _Done(getattr(self.handles[i], method)(*args))
        except Exception as exc:  # noqa: BLE001 - reported per shard, as a Ray task failure is
            return _Done(error=exc)

    write = read

    async def available(self) -> tuple[list[int], dict[int, BaseException]]:
        """Every shard (an in-process shard is never on probation)."""
        return list(range(len(self))), {}

    async def gather(self, refs: dict[int, _Done],
                     timeout_s: float) -> tuple[dict[int, Any], dict[int, BaseException]]:
        """The calls' (results, errors) keyed by shard; ``timeout_s`` is moot, they are done."""
        results = {i: d.result for i, d in refs.items() if d.error is None}
        return results, {i: d.error for i, d in refs.items() if d.error is not None}


def open_local_shards(root: str, num_shards: int, bits: int, vector_bytes: int = 0,
                      keypoint_bytes: int = 0, kind: str | None = None) -> list[ShardActor]:
    """``num_shards`` shards under ``root/shard-<i>`` with the given record widths and index
    kind (None: the shards' default, as the service creates them)."""
    return [ShardActor(i, f"{root}/shard-{i}", bits, kind, None, 100_000, vector_bytes, keypoint_bytes)
            for i in range(num_shards)]


def local_router(shards: list[ShardActor], ref_views: int = 0,
                 ref_view_cost: float = REF_VIEW_COST) -> ShardRouter:
    """A :class:`ShardRouter` over in-process shards (``ref_views``: how many reference views
    each image is stored with, as ``ShardRouter`` takes it)."""
    return ShardRouter(shards, ref_views=ref_views, ref_view_cost=ref_view_cost, pool=LocalPool(shards))
