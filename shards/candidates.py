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

from dataclasses import dataclass

import numpy as np

from shards.views import SEP, split_id


@dataclass
class Candidates:
    """One query's candidates: stored ids, Hamming distances and store keys."""

    names: list[str]
    distances: np.ndarray
    hashes: np.ndarray


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


def merge_views(per_view: list[list[dict]], views: list[tuple[str, float]], keep: int | None) -> list[dict]:
    """One query's hits from each of its views (``views``: each one's name and prior cost, in
    ``per_view``'s order) -> per image its best hit having paid its view's cost (``cost`` sums
    what it paid, ``variant`` names the view when there are several), the top ``keep``.

    Each shard merges the views of an image query itself, so it sends back one list instead
    of one per view: the same answer (an image missing from a view's top ``keep`` here has that
    many better images in this shard alone), a fraction of the hits to send and merge.
    """
    best: dict[str, tuple] = {}
    for v, ((_, cost), hits) in enumerate(zip(views, per_view)):
        for hit in hits:
            had = hit.get("cost", 0.0)
            total = round(had + cost, 3)
            paid = total if total > 0 else had
            key = reply_key(hit, paid)
            seen = best.get(hit["id"])
            if seen is None or key < seen[0]:
                best[hit["id"]] = (key, hit, paid, v)
    out = []
    for _, hit, paid, v in sorted(best.values(), key=lambda e: e[0])[:keep]:
        hit = dict(hit)
        if paid > 0:
            hit["cost"] = paid
        if len(views) > 1:
            hit["variant"] = views[v][0]
        out.append(hit)
    return out
