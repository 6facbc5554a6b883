"""Which keypoint block verifies a hit, and the plan of a batch job's pair verification.

An image query carries its keypoints as given and as its mirror sees them (ORB is not
mirror-invariant), then each searched crop's two (``encoders.keypoints.extract_query_views``). A
hit that matched through a mirrored view is verified by the first two blocks and keeps the better
count, so a mirrored copy earns its keypoint credit; one that matched through a crop by every
block, so a photo framed by a screenshot or pasted into a picture is verified by its own
keypoints; a hit through any other view is verified as given.

A batch job (dedup) verifies many (query, stored image) pairs at once: :func:`pair_plan` groups
them by owning shard, with each shard's distinct query blocks stacked once, and
:func:`pair_counts` reads the shards' answers back as one count per pair.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import numpy as np

from encoders.tta import is_mirrored
from shards.verify import KEYPOINT_BYTES, block_rows

Plan = dict[int, tuple[list[int], list[str], np.ndarray, list[int]]]


def keypoint_block(view: str, blocks: int) -> int | list[int]:
    """The keypoint blocks a hit that matched through ``view`` is verified by, of a query's
    ``blocks`` (``encoders.keypoints.extract_query_views``: as given, mirrored, then each
    searched crop's two): the query as given (0); for a mirrored view the better of as given
    and mirrored (a symmetric image's mirror can match as well); for the crop of a framed or
    pasted photo, or its mirror, the best of all (-1), its crop's own included."""
    if view.startswith("content") and blocks > 2:
        return -1
    if blocks > 1 and is_mirrored(view):
        return -1 if blocks == 2 else [0, 1]
    return 0


def pair_plan(shard_for: Callable[[str], int], pairs: list[tuple[int, str]], keypoints: list[np.ndarray],
              views: list[str] | None = None) -> Plan:
    """(query, stored id) pairs by owning shard -> {shard: (the pair each entry verifies, stored
    ids, the query blocks they use, each entry's block)}. Pair i is verified by ``keypoints[i]``
    as given, and by its mirrored block too where ``views[i]``, the query view it matched
    through, is mirrored (two entries)."""
    entries: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for row, (_, item_id) in enumerate(pairs):
        n = len(np.asarray(keypoints[row]).reshape(-1, KEYPOINT_BYTES))
        use = block_rows(keypoint_block(views[row] if views else "original", n), n)
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
