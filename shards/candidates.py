"""A shard's answer to one search: its index's candidates per query, scored, ordered, and
optionally folded into images, as the plain hit dicts the router merges.

Each query's candidates are its Hamming nearest codes. With the queries' side vectors, on a
shard that stores its own, each gains ``score`` (``shards.vectors``; its Hamming distance where
the entry has no vector), else with the queries' bit confidences ``weighted`` (weighted Hamming
distance, ``shards.weighted``), and they are ordered by it, else by distance; ties go by
distance, then id. With ``fold`` (the prior cost a stored reference view's match pays, ``shards.views``) each
image's candidates and its views' fold into one, the image's best, where a view's pays the
cost (``ref_view`` and ``cost`` say so), and only the top ``keep`` images are returned: an image
query searches many views of itself against twice as many candidates as it keeps, and folding
here, where an image and its views live together, sends back only what the router can use.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from shards.vectors import paired_distances
from shards.views import SEP, split_id, verify_id
from shards.weighted import paired_weighted_hamming


@dataclass
class Candidates:
    """One query's candidates: stored ids, Hamming distances and store keys."""

    names: list[str]
    distances: np.ndarray
    hashes: np.ndarray


def score_rows(layout, rows: np.ndarray, of_query: np.ndarray, codes: np.ndarray,
               vectors: np.ndarray | None, weights: np.ndarray | None) -> np.ndarray:
    """Each candidate's score, all queries' in one pass: ``rows`` are the candidates' stored
    records (``shards.records.RecordLayout``) and ``of_query`` says which query each answers,
    scored by that query's side vector (``vectors``: NaN where none is stored) or else by its
    code and bit confidences (``codes``, ``weights``: weighted Hamming)."""
    if vectors is not None:
        return paired_distances(vectors[of_query], layout.vector_array(rows), layout.code_bytes * 8)
    return paired_weighted_hamming(codes[of_query], weights[of_query], rows[:, :layout.code_bytes])


def rank_keys(c: Candidates, scores: np.ndarray | None) -> list[float] | None:
    """Each candidate's score rounded to 3 places, its distance where it has none (NaN: no side
    vector stored); None when the query was not scored."""
    if scores is None:
        return None
    values = np.where(np.isnan(scores), c.distances, np.asarray(scores, dtype=np.float64))
    return np.round(values, 3).tolist()  # the float32 scores are never half-way: as round()


def hits(c: Candidates, keys: list[float] | None, fold: float | None = None,
         keep: int | None = None, name: str = "score") -> list[tuple[int, dict]]:
    """One query's (candidate index, hit dict), best first: every candidate, or with ``fold``
    the top ``keep`` images (see the module docstring). ``name``: the hit field the keys go to
    (``score`` or ``weighted``)."""
    if fold is None:  # unscored candidates keep the index's order: by distance
        order = range(len(c.names)) if keys is None else _order(keys, c.distances, c.names)
        return [(i, _hit(c, keys, i, c.names[i], None, 0.0, name)) for i in order]
    cost = round(fold, 3)
    return [(i, _hit(c, keys, i, image, view, cost, name))
            for i, image, view in _folded(c, keys, fold, keep)]


def _order(keys: list[float] | np.ndarray | None, distances: np.ndarray, names: list[str]) -> list[int]:
    """Candidate indices by (key, distance, stored id). ``np.lexsort`` takes the last key first;
    the ids, slow to sort, are sorted by only when two candidates tie on both numbers."""
    primary = distances if keys is None else np.asarray(keys, dtype=np.float64)
    order = np.lexsort((distances, primary))
    p, d = primary[order], distances[order]
    if np.any((p[1:] == p[:-1]) & (d[1:] == d[:-1])):
        order = np.lexsort((np.array(names, dtype=str), distances, primary))
    return order.tolist()


def _folded(c: Candidates, keys: list[float] | None, cost: float,
            keep: int | None) -> list[tuple[int, str, str | None]]:
    """(candidate index, image id, view or None) of the top ``keep`` images, each at its best
    candidate, a view's paying ``cost``; ties by distance, then stored id."""
    base = c.distances if keys is None else np.asarray(keys, dtype=np.float64)
    views = np.fromiter((SEP in n for n in c.names), dtype=bool, count=len(c.names))
    folded = base + cost * views if cost else keys
    out: list[tuple[int, str, str | None]] = []
    seen: set[str] = set()
    for i in _order(folded, c.distances, c.names):
        image, view = split_id(c.names[i])
        if image not in seen:
            seen.add(image)
            out.append((i, image, view))
            if keep is not None and len(out) == keep:
                break
    return out


def _hit(c: Candidates, keys: list[float] | None, i: int, image: str, view: str | None,
         cost: float, name: str) -> dict:
    hit = {"id": image, "distance": int(c.distances[i])}
    if keys is not None:
        hit[name] = keys[i]
    if view is not None:
        hit["ref_view"] = view
        if cost > 0:
            hit["cost"] = cost
    return hit


def reply_key(hit: dict, cost: float | None = None) -> tuple[float, int, str]:
    """The rank key of a hit dict before verification: its ``score`` or else ``weighted`` or
    else its distance, plus the ``cost`` of the views that matched (or ``cost`` when given);
    then distance, then id."""
    d = hit["distance"]
    value = hit.get("score", hit.get("weighted"))
    return ((d if value is None else value) + (hit.get("cost", 0.0) if cost is None else cost), d, hit["id"])


def merge_views(per_code: list[list[dict]], views: list[tuple[int, str, float]],
                keep: int | None) -> list[list[dict]]:
    """Hits of image queries' views -> per query, per image its best hit having paid its view's
    cost, the top ``keep``. ``views`` gives each code (each list of ``per_code``) its query, view
    name and prior cost (``encoders.tta.costs``: a mirrored or turned match must be clearly
    better than the query as given). A hit's ``cost`` sums what it paid, with the stored view's
    cost it may carry; ``variant`` names its view when its query has several.

    A shard merges each query's views itself and sends back one list per query instead of one
    per view: the same answer as merging after the shards (an image missing from a view's top
    ``keep`` on its shard has that many better images there), a fraction of the hits to send.
    """
    best: list[dict[str, tuple]] = [{} for _ in range(views[-1][0] + 1 if views else 0)]
    for v, ((q, _, cost), hits) in enumerate(zip(views, per_code)):
        for hit in hits:
            had = hit.get("cost", 0.0)
            total = round(had + cost, 3)
            paid = total if total > 0 else had
            key = reply_key(hit, paid)
            seen = best[q].get(hit["id"])
            if seen is None or key < seen[0]:
                best[q][hit["id"]] = (key, hit, paid, v)
    per_query = Counter(q for q, _, _ in views)
    return [[_paid(hit, paid, views[v][1] if per_query[q] > 1 else None)
             for _, hit, paid, v in sorted(found.values(), key=lambda e: e[0])[:keep]]
            for q, found in enumerate(best)]


def _paid(hit: dict, paid: float, variant: str | None) -> dict:
    hit = dict(hit)
    if paid > 0:
        hit["cost"] = paid
    if variant is not None:
        hit["variant"] = variant
    return hit


def verify_top(hits: list[dict], depth: int, keypoints: bytes, blocks: dict[str, int],
               verify: Callable[[list[str], bytes, list[int]], list[int | None]]) -> list[dict]:
    """One query's merged hits, its top ``depth`` spatially verified (``verify``:
    ``ShardActor.verify``; each hit by the keypoint block its view names in ``blocks``): a count
    sets the hit's ``inliers``. A hit through a stored view is verified by the view's id
    (``shards.views.verify_id``). The order stays as it was; the router re-orders by the credit
    once the shards' lists are merged."""
    top = hits[:depth]
    counts = verify([verify_id(h["id"], h.get("ref_view")) for h in top], keypoints,
                    [blocks.get(h.get("variant") or "original", 0) for h in top])
    for hit, n in zip(top, counts):
        if n is not None:
            hit["inliers"] = n
    return hits
