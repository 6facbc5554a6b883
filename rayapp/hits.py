"""A hit: one stored image that answers a query, typed from the shards' replies to the JSON.

Shard actors answer with plain dicts (``shards`` never imports ``rayapp``); the router turns
them into :class:`Hit` values (``Hit.from_shard``, for the hits ``rayapp.ranking.merge_results``
keeps), the ranking and the :class:`Searcher` work
with those, and a hit becomes a dict again only where it leaves the process: the HTTP API
(``to_json``), ``neardup search`` (``to_cli_json``), the dedup edges and the demo, which reads
the HTTP answer back (``from_json``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from shards.verify import verify_bonus


@dataclass(frozen=True)
class Hit:
    """One stored image found for one query (the HTTP contract's hit).

    Optional signals are None (``cost`` 0) until a step of the query path sets them, and are
    left out of the JSON until then. The field order is the JSON's key order.
    """

    id: str
    distance: int                     # Hamming distance (what ``radius`` bounds)
    meta: dict | None = None          # the stored meta, when asked for
    score: float | None = None        # side-vector distance, from shards that store vectors
    shard: int | None = None          # the shard that holds it
    weighted: float | None = None     # weighted Hamming distance (the query's bit confidences)
    cost: float = 0.0                 # prior cost of the query and stored views that matched
    ref_view: str | None = None       # the stored reference view that matched
    variant: str | None = None        # the query view that matched
    inliers: int | None = None        # keypoints that verified it
    rank: float | None = None         # the final rank value: lower is better
    confidence: float | None = None   # calibrated estimated precision, 0-1

    def but(self, **changes: Any) -> "Hit":
        """A copy with ``changes`` (``dataclasses.replace``, without re-running the frozen
        ``__init__``: the query path copies hits by the thousand)."""
        if not changes.keys() <= _FIELDS:
            raise TypeError(f"Hit has no field(s) {sorted(changes.keys() - _FIELDS)}")
        new = object.__new__(Hit)
        new.__dict__.update(self.__dict__, **changes)
        return new

    @classmethod
    def from_shard(cls, raw: dict, shard: int) -> "Hit":
        """A shard actor's hit (``ShardActor.search``: id, distance, optional meta, score or
        weighted, cost and ref_view) as held by shard ``shard``."""
        return _BLANK.but(**raw, shard=shard)

    @classmethod
    def from_json(cls, obj: dict) -> "Hit":
        """A hit read back from an HTTP answer (``to_json``); fields it does not know are
        ignored, so a newer server's additions do not break a client."""
        return cls(**{k: v for k, v in obj.items() if k in _JSON_FIELDS})

    def to_json(self) -> dict:
        """The HTTP contract's hit: every field that is set, in field order."""
        return self._present(_JSON_FIELDS)

    def to_cli_json(self) -> dict:
        """``neardup search --json``'s hit: the stored ``path`` instead of meta and shard."""
        return {"id": self.id, "path": self.path, "distance": self.distance, **self._present(_CLI_FIELDS)}

    def _present(self, names: tuple[str, ...]) -> dict:
        values = self.__dict__
        return {n: values[n] for n in names
                if values[n] is not None and (n != "cost" or values[n] > 0)}

    @property
    def path(self) -> str | None:
        """The stored image's path, from its meta (None without one)."""
        return (self.meta or {}).get("path")

    def matched_as(self) -> str:
        """How it matched: "original", or the query's view and/or the stored crop that matched,
        and the keypoints that verified it, e.g. "flip", "its center70", "flip, 57 keypoints"."""
        parts = [self.variant] if self.variant not in (None, "original") else []
        parts += [f"its {self.ref_view}"] if self.ref_view is not None else []
        parts += [f"{self.inliers} keypoints"] if verify_bonus(self.inliers or 0) > 0 else []
        return ", ".join(parts) or "original"


_FIELDS = frozenset(f.name for f in fields(Hit))
_JSON_FIELDS = tuple(f.name for f in fields(Hit))
_CLI_FIELDS = ("rank", "confidence", "score", "weighted", "cost", "variant", "ref_view", "inliers")
_BLANK = Hit("", 0)

