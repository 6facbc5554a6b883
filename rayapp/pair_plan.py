"""Which keypoint block verifies a hit, and the plan of a batch job's pair verification.

An image query carries its keypoints as given and, when it is verified, as its mirror sees them
(``encoders.keypoints.extract_query``: ORB is not mirror-invariant). A hit that matched through
a mirrored view is verified by both blocks and keeps the better count, so a mirrored copy earns
its keypoint credit; a hit through any other view is verified as given.

A batch job (dedup) verifies many (query, stored image) pairs at once: :func:`pair_plan` groups
them by owning shard, with each shard's distinct query blocks stacked once, and
:func:`pair_counts` reads the shards' answers back as one count per pair.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import numpy as np

from encoders.tta import is_mirrored
from shards.verify import KEYPOINT_BYTES

Plan = dict[int, tuple[list[int], list[str], np.ndarray, list[int]]]


def keypoint_block(view: str, blocks: int) -> int:
    """The keypoint block a hit that matched through ``view`` is verified by: the query as given
    (0), or for a mirrored view the better of as given and mirrored (-1: a symmetric image's
    mirror can match as well)."""
    return -1 if blocks > 1 and is_mirrored(view) else 0


def pair_plan(shard_for: Callable[[str], int], pairs: list[tuple[int, str]], keypoints: list[np.ndarray],
              views: list[str] | None = None) -> Plan:
    """(query, stored id) pairs by owning shard -> {shard: (the pair each entry verifies, stored
    ids, the query blocks they use, each entry's block)}. Pair i is verified by ``keypoints[i]``
    as given, and by its mirrored block too where ``views[i]``, the query view it matched
    through, is mirrored (two entries)."""
    entries: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for row, (_, item_id) in enumerate(pairs):
        n = len(np.asarray(keypoints[row]).reshape(-1, KEYPOINT_BYTES))
        use = range(n) if keypoint_block(views[row] if views else "original", n) < 0 else (0,)
        entries[shard_for(str(item_id))] += [(row, b) for b in use]
    plan = {}
    for s, es in entries.items():
        where: dict[tuple[int, int], int] = {}  # (query, its block) -> row of the shard's blocks
        blocks = []
        for r, b in es:
            if (pairs[r][0], b) not in where:
                where[pairs[r][0], b] = len(blocks)
                blocks.append(np.ascontiguousarray(keypoints[r], np.uint8).reshape(-1, KEYPOINT_BYTES)[b])
        plan[s] = ([r for r, _ in es], [str(pairs[r][1]) for r, _ in es], np.stack(blocks),
                   [where[pairs[r][0], b] for r, b in es])
    return plan


def pair_counts(n: int, plan: Plan, results: dict[int, list[int | None]]) -> list[int | None]:
    """Each of ``n`` pairs' inlier count from the shards' answers to a :func:`pair_plan`: the
    better of its entries' (as given and mirrored); None where no entry was verified."""
    out: list[int | None] = [None] * n
    for s, got in results.items():
        for r, count in zip(plan[s][0], got):
            if count is not None and (out[r] is None or count > out[r]):
                out[r] = count
    return out
