"""Duplicate groups from match edges, without chaining look-alikes.

Single linkage (connected components) joins A and C when A matches B and B matches C, so a
collection of similar photos (all the grey jackets of a shop) collapses into one giant group
through a chain of look-alikes. Here a group is a *star*: one representative, the copy a user
should keep, and only images that match it directly. Representatives are taken in keep order
(most pixels first, then id), so the largest copy of a photo heads its group; a group can
never be larger than its representative's matches plus one, however long a chain is.

>>> groups = star_groups([("a.jpg", "b.jpg", 0.999), ("b.jpg", "c.jpg", 0.995)],
...                      pixels={"a.jpg": 100, "b.jpg": 400, "c.jpg": 50})
>>> [(g.keep, g.members) for g in groups]
[('b.jpg', {'a.jpg': 0.999, 'c.jpg': 0.995})]
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable


@dataclass
class Group:
    """One representative (``keep``) and the images that match it, with each one's
    confidence of being a copy of it."""

    keep: str
    members: dict[str, float] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        """The representative, then its members, most confident first."""
        return [self.keep, *sorted(self.members, key=lambda m: (-self.members[m], m))]

    def __len__(self) -> int:
        return 1 + len(self.members)


def strongest_edges(edges: Iterable[tuple[str, str, float]]) -> dict[tuple[str, str], float]:
    """Undirected edges, each pair once (a < b) with its highest confidence (a match is usually
    found from both sides, not always with the same confidence)."""
    best: dict[tuple[str, str], float] = {}
    for a, b, conf in edges:
        if a == b:
            continue
        key = (a, b) if a < b else (b, a)
        if conf > best.get(key, -1.0):
            best[key] = float(conf)
    return best


def keep_order(ids: Iterable[str], pixels: dict[str, int]) -> list[str]:
    """Which copy to keep first: most pixels, then the smallest id."""
    return sorted(ids, key=lambda i: (-int(pixels.get(i, 0)), i))


def star_groups(edges: Iterable[tuple[str, str, float]], pixels: dict[str, int] | None = None) -> list[Group]:
    """Groups of two or more images (see the module docstring), largest first."""
    neighbours: dict[str, dict[str, float]] = defaultdict(dict)
    for (a, b), conf in strongest_edges(edges).items():
        neighbours[a][b] = neighbours[b][a] = conf
    taken: set[str] = set()
    groups = []
    for rep in keep_order(neighbours, pixels or {}):
        if rep in taken:
            continue
        members = {m: c for m, c in neighbours[rep].items() if m not in taken}
        if not members:
            continue
        taken.add(rep)
        taken.update(members)
        groups.append(Group(rep, members))
    return sorted(groups, key=lambda g: (-len(g), g.keep))


def pair_scores(groups: list[Group], truth: dict[str, str]) -> dict:
    """Pair precision and recall of ``groups`` against true group labels (``truth``: id ->
    label; ids without a label are their own), and purity: the share of grouped images whose
    group's majority label is theirs. Pairs count every two images in one group."""
    def pairs_of(sets: Iterable[list[str]]) -> set[tuple[str, str]]:
        return {(a, b) if a < b else (b, a) for s in sets for i, a in enumerate(s) for b in s[i + 1:]}
    found = pairs_of(g.ids for g in groups)
    by_label: dict[str, list[str]] = defaultdict(list)
    for item, label in truth.items():
        by_label[label].append(item)
    true = pairs_of(by_label.values())
    hit = len(found & true)
    majority = 0
    for g in groups:
        labels = [truth.get(i, i) for i in g.ids]
        majority += max(labels.count(x) for x in set(labels))
    grouped = sum(len(g) for g in groups)
    return {"pairs_found": len(found), "pairs_true": len(true), "pairs_right": hit,
            "pair_precision": round(hit / len(found), 4) if found else 1.0,
            "pair_recall": round(hit / len(true), 4) if true else 1.0,
            "purity": round(majority / grouped, 4) if grouped else 1.0,
            "groups": len(groups), "largest": max((len(g) for g in groups), default=0)}
