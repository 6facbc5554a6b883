"""Route adds to one shard by a stable hash of the id; fan searches out to every shard and merge.

Queries go to all shards in parallel, each with a timeout, so the slowest or a dead shard can
only make an answer *partial*, never hang it or fail it. Writes go to the owning shard only and
raise :class:`ShardUnavailable` when that shard does not acknowledge, so callers can answer 503
instead of claiming durability they do not have. Deadlines and the probation of failed shards
are :class:`rayapp.shard_pool.ShardPool`'s.

An image may be stored with reference views (``shards.views``): extra entries holding the codes
of some of its crops, on the image's shard. Each shard folds a view's hit into its image's
(``shards.candidates``), so the router merges images, and removing an image removes its views.

An image query's top hits can then be spatially verified (``verify``): each owning shard
matches the query's keypoints against its stored images' (``shards.verify``), and a hit that
shares many keypoints under one geometry gains a distance credit (``verify_bonus``).

Each operation is written once, as a coroutine for Serve's event loop (``asearch``, ``aadd``,
...); its synchronous name (``search``, ``add``, ...) is a thin wrapper that runs it to its end
(``rayapp.blocking.run_sync``) for the CLI, ingest and jobs.
"""
from __future__ import annotations

import pickle
from collections import defaultdict
from typing import Any, Callable

import numpy as np
import xxhash
from ray.actor import ActorHandle

from encoders.tta import MIRRORED_REF_VIEWS, REF_VIEW_COST, REF_VIEWS, is_mirrored
from rayapp.blocking import run_sync
from rayapp.hits import Hit
from rayapp.pair_plan import keypoint_block, pair_counts, pair_plan
from rayapp.ranking import merge_results, rerank_depth, with_inliers
from rayapp.shard_pool import ShardPool, client_error, reason
from shards.checks import check_views, check_weights
from shards.verify import KEYPOINT_BYTES
from shards.views import base_id, check_base_id, verify_id, view_id


class ShardUnavailable(RuntimeError):
    """A write or point lookup could not reach its owning shard(s) in time."""

    def __init__(self, shards: list[int], reasons: dict[int, str]):
        self.shards = sorted(shards)
        self.reasons = reasons
        detail = "; ".join(f"shard {i}: {reasons[i]}" for i in self.shards)
        super().__init__(f"shard(s) {self.shards} unavailable ({detail})")


def shard_for(item_id: str, num_shards: int) -> int:
    """Stable owner of ``item_id``: xxhash64 of its UTF-8 bytes, mod the shard count (a stored
    reference view goes by its image's id, so it lives on the image's shard)."""
    if not isinstance(item_id, str):
        raise TypeError(f"id must be a string, not {type(item_id).__name__}")
    return xxhash.xxh64_intdigest(base_id(item_id).encode("utf-8")) % num_shards


def raise_write_errors(errors: dict[int, BaseException]) -> None:
    """A write or point lookup that any owning shard failed: ValueError if a shard rejected the
    input, else ShardUnavailable naming the shards and why."""
    if not errors:
        return
    for exc in errors.values():
        bad = client_error(exc)
        if bad is not None:
            raise bad
    raise ShardUnavailable(list(errors), {i: reason(e) for i, e in errors.items()})


def with_views(ids: list[str], codes: np.ndarray | None, metas: list[dict] | None,
               views: dict[str, np.ndarray] | None) -> tuple[list[str], Any, Any, list[str]]:
    """An add of images plus their reference views -> (ids, codes, metas) of every entry to
    store, and the stored ids to drop: each image's known views that ``views`` does not hold.
    A view's record may be shorter than its image's (no keypoints: verification uses the
    image's); it is zero-filled to the same width."""
    for item_id in ids:
        check_base_id(item_id)  # a client id must not pose as a stored view
    views = views or {}
    unknown = [v for v in views if v not in REF_VIEWS]
    if unknown:
        raise ValueError(f"unknown reference view(s) {unknown}; known: {', '.join(REF_VIEWS)}")
    drop = [view_id(i, v) for i in ids for v in REF_VIEWS if v not in views]
    if not views:
        return ids, codes, metas, drop
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    for name, vc in views.items():
        if np.ndim(vc) != 2 or len(vc) != len(codes) or np.shape(vc)[1] > codes.shape[1]:
            raise ValueError(f"view {name!r} codes must have shape {codes.shape}, got {np.shape(vc)}")
    all_ids = ids + [view_id(i, v) for v in views for i in ids]
    padded = [np.pad(np.asarray(vc, dtype=np.uint8), ((0, 0), (0, codes.shape[1] - np.shape(vc)[1])))
              for vc in views.values()]
    all_codes = np.concatenate([codes, *padded])
    all_metas = None if metas is None else list(metas) * (1 + len(views))
    return all_ids, all_codes, all_metas, drop


def skipped_ref_views(views: list[tuple[int, str, float]] | None) -> tuple[str, ...]:
    """Stored views a search leaves out: queries that search their own mirror have no use for
    stored mirrors (a second path to the same match, and to every look-alike's)."""
    return tuple(MIRRORED_REF_VIEWS) if views and any(is_mirrored(name) for _, name, _ in views) else ()


class ShardRouter:
    """Client-side view of the shard actors: owner routing, parallel fan-out, k-way merge.

    ``resolver(i)`` (optional) looks shard ``i`` up again, e.g. by actor name, after its handle
    died for good (a shard re-created under the same name gets a new handle). ``ref_views``
    (how many reference views an image is stored with) makes searches fetch deep enough that
    k distinct images remain after folding; a view's hit pays ``ref_view_cost``. ``pool`` makes
    the shard calls: by default Ray actor calls (``ShardPool``); ``rayapp.local_shards`` gives
    one over in-process shards.
    """

    def __init__(self, shards: list[ActorHandle], timeout_s: float = 2.0,
                 write_timeout_s: float = 30.0,
                 resolver: Callable[[int], ActorHandle | None] | None = None,
                 ref_views: int = 0, ref_view_cost: float = REF_VIEW_COST, pool: Any = None):
        if not shards:
            raise ValueError("ShardRouter needs at least one shard")
        if ref_view_cost < 0:
            raise ValueError(f"ref_view_cost must be >= 0, got {ref_view_cost}")
        self.pool = pool if pool is not None else ShardPool(shards, resolver)
        self.ref_views = int(ref_views)
        self.ref_view_cost = float(ref_view_cost)
        self.timeout_s = float(timeout_s)
        self.write_timeout_s = float(write_timeout_s)

    @property
    def shards(self) -> list[ActorHandle]:
        """The shard actors' handles, by shard id (a re-resolved handle replaces a dead one)."""
        return self.pool.handles

    @property
    def num_shards(self) -> int:
        return len(self.pool)

    def shard_for(self, item_id: str) -> int:
        """Index of the shard that owns ``item_id``."""
        return shard_for(item_id, self.num_shards)

    # ---- request building -------------------------------------------------------------
    def _group(self, ids: list[str], codes: np.ndarray | None = None,
               metas: list[dict] | None = None) -> dict[int, tuple]:
        """Split a write by owning shard -> {shard: (ids, codes, metas)}."""
        if codes is not None:
            codes = np.ascontiguousarray(codes, dtype=np.uint8)
            if codes.ndim != 2 or len(codes) != len(ids):
                raise ValueError(f"codes must be (n, bytes) with n == len(ids) == {len(ids)}, "
                                 f"got shape {codes.shape}")
        if metas is not None and len(metas) != len(ids):
            raise ValueError(f"metas has {len(metas)} entries for {len(ids)} ids")
        rows: dict[int, list[int]] = defaultdict(list)
        for row, item_id in enumerate(ids):
            rows[self.shard_for(item_id)].append(row)
        return {
            s: ([ids[r] for r in rs],
                None if codes is None else codes[rs],
                None if metas is None else [metas[r] for r in rs])
            for s, rs in rows.items()
        }

    @staticmethod
    def _query(codes: np.ndarray, k: int, radius: int | None) -> np.ndarray:
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if codes.ndim == 1:
            codes = codes[None, :]
        if codes.ndim != 2:
            raise ValueError(f"query codes must be (n, bytes), got shape {codes.shape}")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if radius is not None and int(radius) < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        return codes

    def _submit_search(self, shards: list[int], codes, depth, radius, with_meta, vectors, weights,
                       keep, views=None, verify=None) -> dict[int, Any]:
        """One search call per shard: each ranks its ``depth`` candidates per query, folds its
        stored views into their images and returns its top ``keep`` images, with ``views`` one
        list for the query's views merged and with ``verify`` its top hits verified
        (``ShardActor.search``)."""
        radius = None if radius is None else int(radius)
        payload = pickle.dumps((codes, int(depth), radius, with_meta, vectors, weights, self.ref_view_cost,
                                int(keep), views, verify, skipped_ref_views(views)), pickle.HIGHEST_PROTOCOL)
        return {i: self.pool.read(i, "search_pickled", payload) for i in shards}

    @staticmethod
    def _verify_plan(verify: tuple[int, np.ndarray] | None,
                     views: list[tuple[int, str, float]] | None) -> tuple | None:
        """(depth, the query's keypoints) -> what each shard verifies its top hits by: the depth,
        the packed blocks and each view's block (``keypoint_block``)."""
        if verify is None or not verify[0]:
            return None
        if views is None:
            raise ValueError("verifying within the search needs the query's views")
        blocks = np.ascontiguousarray(verify[1], dtype=np.uint8).reshape(-1, KEYPOINT_BYTES)
        return int(verify[0]), blocks.tobytes(), {name: keypoint_block(name, len(blocks)) for _, name, _ in views}

    # ---- search -----------------------------------------------------------------------
    async def asearch(self, codes: np.ndarray, k: int = 10, radius: int | None = None,
                      with_meta: bool = False, weights: np.ndarray | None = None,
                      vectors: np.ndarray | None = None,
                      views: list[tuple[int, str, float]] | None = None,
                      verify: tuple[int, np.ndarray] | None = None) -> tuple[list[list[Hit]], list[int]]:
        """Top-k images per query over all shards -> (hits, ids of shards that did not answer).

        With side ``vectors`` (n, d) or bit confidences ``weights`` (n, bits), each shard
        ranks its ``rerank_depth(k)`` Hamming neighbours: by cosine where it stores side vectors
        (``score``, ``shards.vectors``), else by weighted Hamming distance (``weighted``,
        ``shards.weighted``); without either, by Hamming distance. Each shard folds its stored
        views into their images and sends back its top k; the router merges them. With
        ``views`` (each code's query, view name and prior cost) the codes are image queries'
        views, each shard merges each query's (``shards.candidates.merge_views``) and the answer
        is one list per query. With ``verify`` (depth, keypoints as ``averify`` takes them) for
        one image query, the merged top ``depth`` hits come back spatially verified (their
        ``inliers``; order them by ``ranking.order_key``).

        A single shard verifies its top hits within the search call, saving a round trip. Over
        several, the merged top is verified by a second call to the shards that hold it: each
        shard verifying its own top ``depth`` in the search call would cover it too, but at as
        many times the verification as there are shards.
        """
        codes = self._query(codes, k, radius)
        views = None if views is None else check_views(views, len(codes))
        plan = self._verify_plan(verify, views)
        inline = plan is not None and self.num_shards == 1
        shards, skipped = await self.pool.available()
        depth = self._depth(codes, k, weights, vectors)
        results, errors = await self.pool.gather(self._submit_search(
            shards, codes, depth, radius, with_meta, vectors, weights, k, views, plan if inline else None),
            self.timeout_s)
        queries = len(codes) if views is None else views[-1][0] + 1
        merged = merge_results(results, queries, int(k), radius)
        if plan is not None and not inline:
            merged = [await self.averify(merged[0], verify[1], plan[0])]
        return merged, sorted({**skipped, **errors})

    def search(self, codes: np.ndarray, k: int = 10, radius: int | None = None,
               with_meta: bool = False, weights: np.ndarray | None = None,
               vectors: np.ndarray | None = None,
               views: list[tuple[int, str, float]] | None = None) -> tuple[list[list[Hit]], list[int]]:
        """:meth:`asearch`, waited for."""
        return run_sync(self.asearch(codes, k, radius, with_meta, weights, vectors, views))

    def _depth(self, codes: np.ndarray, k: int, weights: np.ndarray | None,
               vectors: np.ndarray | None = None) -> int:
        """Neighbours to fetch per shard for this query (bad shapes raise here, before any
        shard is asked): ranked queries (side vectors or bit confidences) fetch
        ``rerank_depth(k)``, and an image can take up to 1 + ref_views of them."""
        if vectors is not None and len(vectors) != len(codes):
            raise ValueError(f"got {len(vectors)} query vectors for {len(codes)} codes")
        if weights is not None:
            check_weights(weights, len(codes), codes.shape[1] * 8)
        ranked = weights is not None or vectors is not None
        depth = rerank_depth(int(k)) if ranked else int(k)
        return depth * (1 + self.ref_views)

    # ---- spatial verification ---------------------------------------------------------
    def _submit_verify(self, hits: list[Hit], keypoints: np.ndarray,
                       depth: int) -> tuple[dict[int, tuple], dict[int, Any]]:
        """Each owning shard's top hits, with the keypoint block to verify each by (``keypoint_block``)."""
        blocks = np.ascontiguousarray(keypoints, dtype=np.uint8).reshape(-1, KEYPOINT_BYTES)
        top = hits[:max(0, depth)]
        which = [keypoint_block(h.variant or "original", len(blocks)) for h in top]
        groups = self._group([verify_id(h.id, h.ref_view) for h in top], None, which)
        return groups, {s: self.pool.read(s, "verify", ids, blocks.tobytes(), ws)
                        for s, (ids, _, ws) in groups.items()}

    async def averify(self, hits: list[Hit], keypoints: np.ndarray, depth: int) -> list[Hit]:
        """One image query's merged hits with its top ``depth`` spatially verified by their
        shards (``ShardActor.verify``; ``keypoints``: the query's blocks, as given, mirrored and
        each searched crop's, ``encoders.keypoints.extract_query_views``) and re-ordered. A shard that fails
        leaves its hits as they were (the answer is still right, only less sure)."""
        groups, refs = self._submit_verify(hits, keypoints, depth)
        results, _ = await self.pool.gather(refs, self.timeout_s)
        counts = {base_id(stored_id): n for s, got in results.items() for stored_id, n in zip(groups[s][0], got)}
        return with_inliers(hits, counts)

    def verify(self, hits: list[Hit], keypoints: np.ndarray, depth: int) -> list[Hit]:
        """:meth:`averify`, waited for."""
        return run_sync(self.averify(hits, keypoints, depth))

    async def averify_pairs(self, pairs: list[tuple[int, str]], keypoints: list[np.ndarray],
                            at_least: list[int] | None = None, views: list[str] | None = None) -> list[int | None]:
        """Batch verification for jobs: each (query, stored id) pair against its query's
        keypoints (``keypoints[i]`` for pair i, by the blocks ``keypoint_block`` names for
        ``views[i]``, the query view it matched through), in one call per owning shard -> each
        pair's inlier count (None: not verified; a shard that fails leaves its pairs None).
        ``at_least[i]``: the fewest inliers that matter for pair i, under which a count may be
        answered 0 (``shards.verify.inliers_many``); the shards count exactly."""
        plan = pair_plan(self.shard_for, pairs, keypoints, views)
        refs = {s: self.pool.read(s, "verify", ids, blocks.tobytes(), which)
                for s, (_, ids, blocks, which) in plan.items()}
        results, _ = await self.pool.gather(refs, self.timeout_s)
        return pair_counts(len(pairs), plan, results)

    def verify_pairs(self, pairs: list[tuple[int, str]], keypoints: list[np.ndarray],
                     at_least: list[int] | None = None, views: list[str] | None = None) -> list[int | None]:
        """:meth:`averify_pairs`, waited for."""
        return run_sync(self.averify_pairs(pairs, keypoints, at_least, views))

    # ---- writes -----------------------------------------------------------------------
    async def aadd(self, ids: list[str], codes: np.ndarray, metas: list[dict] | None = None,
                   views: dict[str, np.ndarray] | None = None) -> dict:
        """Add to the owning shards in parallel; returns summed counts (of images, not views)
        once all are durable.

        ``views`` maps a reference-view name to the codes of that crop of each image, (n, bytes)
        like ``codes``; they are stored with the image, and any view of it they do not hold is
        removed in the same durable step (a new code makes the old crops' codes stale).
        Raises ShardUnavailable if any owning shard fails (adds that reached other shards are
        durable; retrying is safe because adds are idempotent by id), ValueError if a shard
        rejects the input.
        """
        ids, codes, metas, drop = with_views(list(ids), codes, metas, views)
        drops = self._group(drop) if drop else {}
        refs = {s: self.pool.write(s, "add", i, c, m, drops.get(s, ([],))[0])
                for s, (i, c, m) in self._group(ids, codes, metas).items()}
        results, errors = await self.pool.gather(refs, self.write_timeout_s)
        raise_write_errors(errors)
        total = {"added": 0, "replaced": 0, "unchanged": 0}
        for r in results.values():
            for key in total:
                total[key] += int(r.get(key, 0))
        return total

    def add(self, ids: list[str], codes: np.ndarray, metas: list[dict] | None = None,
            views: dict[str, np.ndarray] | None = None) -> dict:
        """:meth:`aadd`, waited for."""
        return run_sync(self.aadd(ids, codes, metas, views))

    async def aremove(self, ids: list[str]) -> int:
        """Remove images and their reference views from their owning shards (durable on return)
        -> number of images actually removed."""
        ids = list(ids)
        ids += [view_id(i, v) for i in ids for v in REF_VIEWS]
        refs = {s: self.pool.write(s, "remove", i) for s, (i, _, _) in self._group(ids).items()}
        results, errors = await self.pool.gather(refs, self.write_timeout_s)
        raise_write_errors(errors)
        return sum(int(n) for n in results.values())

    def remove(self, ids: list[str]) -> int:
        """:meth:`aremove`, waited for."""
        return run_sync(self.aremove(ids))

    # ---- point reads and stats --------------------------------------------------------
    async def aget(self, item_id: str) -> dict | None:
        """The item's ``{"id", "code", "meta"}`` from its owning shard, or None if unknown."""
        s = self.shard_for(item_id)
        results, errors = await self.pool.gather({s: self.pool.read(s, "get", item_id)}, self.timeout_s)
        raise_write_errors(errors)
        item = results[s]
        return None if item is None else {**item, "shard": s}

    def get(self, item_id: str) -> dict | None:
        """:meth:`aget`, waited for."""
        return run_sync(self.aget(item_id))

    async def astats(self) -> list[dict]:
        """Each shard's ``stats()``; a shard that does not answer is ``state: unavailable``."""
        refs = {i: self.pool.read(i, "stats") for i in range(self.num_shards)}
        results, errors = await self.pool.gather(refs, self.timeout_s)
        return [{**results[i], "shard_id": results[i].get("shard_id", i)} if i in results
                else {"shard_id": i, "state": "unavailable", "error": reason(errors[i])}
                for i in range(self.num_shards)]

    def stats(self) -> list[dict]:
        """:meth:`astats`, waited for."""
        return run_sync(self.astats())


