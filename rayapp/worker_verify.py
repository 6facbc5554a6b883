"""Verification in a batch job's own workers: the shards send stored keypoints, the workers match.

A shard is one process per node, and part of each pair's verification (``shards.verify``) holds
Python's lock, so a dedup job that has the shards verify every page's pairs runs at about one
core's speed per node, however many workers it starts. :class:`WorkerVerifyingRouter` asks each
owning shard only for the stored keypoints (``ShardActor.keypoints``, a copy of bytes) and
verifies the pairs in the calling worker with the code a shard runs (``verify_blocks``): the
work spreads over the job's workers, one per core, and the counts are the same.

The service keeps verifying in the shards: a query verifies tens of hits, and sending their
keypoints would cost more than matching them where they are.
"""
from __future__ import annotations

import numpy as np

from rayapp.pair_plan import pair_counts, pair_plan
from rayapp.router import ShardRouter
from shards.verify import verify_blocks


class WorkerVerifyingRouter(ShardRouter):
    """A :class:`ShardRouter` whose batch verification (``averify_pairs``) runs in this process."""

    async def averify_pairs(self, pairs: list[tuple[int, str]], keypoints: list[np.ndarray],
                            at_least: list[int] | None = None, views: list[str] | None = None) -> list[int | None]:
        """:meth:`ShardRouter.averify_pairs`, matched here: one keypoints call per owning shard
        (a shard that fails leaves its pairs None); pairs that cannot reach ``at_least[i]``
        inliers skip RANSAC."""
        plan = pair_plan(self.shard_for, pairs, keypoints, views)
        refs = {s: self.pool.read(s, "keypoints", ids) for s, (_, ids, _, _) in plan.items()}
        stored, _ = await self.pool.gather(refs, self.timeout_s)
        results = {s: verify_blocks(plan[s][2], plan[s][3], [k if k[:2].any() else None for k in kps],
                                    None if at_least is None else [at_least[r] for r in plan[s][0]])
                   for s, kps in stored.items()}
        return pair_counts(len(pairs), plan, results)
