"""Stored ids of reference views: extra codes of one image, kept on the image's shard.

An indexed image may also be stored under the codes of some of its crops or of its mirror (its
*reference views*, ``encoders.tta.REF_VIEWS``), so that a crop of it is found: the code of a
60-75% centre crop is far from the full image's but close to its stored centre crop. A view is
verified by its own keypoints where it has them (the mirror), else by its image's
(``verify_id``). Each view is an ordinary entry
whose id is ``<id>\\x1f<view>``. The unit separator is a control character, which no client id
may contain (``check_base_id``), so every stored id is either an image's or one of its views'.
Routing hashes the base id (``base_id``), so an image and its views share a shard, which folds
a view's hit back into its image's (``shards.candidates``).
"""
from __future__ import annotations

SEP = "\x1f"


def view_id(item_id: str, view: str) -> str:
    """The stored id of ``item_id``'s view ``view``."""
    return f"{item_id}{SEP}{view}"


def split_id(stored_id: str) -> tuple[str, str | None]:
    """A stored id -> (the image's id, the view's name or None for the image itself)."""
    base, sep, view = stored_id.partition(SEP)
    return base, (view if sep else None)


def base_id(stored_id: str) -> str:
    """The image id a stored id belongs to (itself for an image)."""
    return stored_id.partition(SEP)[0]


def is_view(stored_id: str) -> bool:
    """Whether a stored id is a reference view rather than an image."""
    return SEP in stored_id


def check_base_id(item_id: str) -> str:
    """``item_id`` if a client may use it, else ValueError (it holds the view separator)."""
    if SEP in item_id:
        raise ValueError(f"id {item_id[:40]!r} contains the unit separator (\\x1f), which is "
                         "reserved for stored reference views")
    return item_id


def verify_id(item_id: str, ref_view: str | None) -> str:
    """The stored id a hit on ``item_id`` is verified by: the view it matched through, if any.
    A view stored with keypoints of its own (a mirror) is verified by those, a crop by its
    image's (``ShardActor.verify``)."""
    return view_id(item_id, ref_view) if ref_view else item_id
