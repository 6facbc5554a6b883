"""Duplicate groups from match edges, without chaining look-alikes.

Single linkage (connected components) joins A and C when A matches B and B matches C, so a
collection of similar photos (all the grey jackets of a shop) collapses into one giant group
through a chain of look-alikes. Here a group is a *star*: one representative, the copy a user
should keep, and only images that match it directly; a group can never be larger than its
representative's matches plus one, however long a chain is. Representatives are taken in keep
order: most matches first (the original is the hub its edited copies all match, while a
copy pasted into a screenshot or a meme has more pixels but matches fewer of its siblings),
then most pixels, then id; an image that matches a representative taken before it is not one.

Each other image then joins the representative, of those it matches, with which it shares the
most matches. A copy of a red shirt that a blue shirt on the same sheet passed for a copy
matches the blue shirt's photo once, and the red shirt's photo and its other copies too: it
joins the red shirt, rather than whichever representative was taken first.

>>> groups = star_groups([("a.jpg", "b.jpg", 0.999), ("b.jpg", "c.jpg", 0.995)],
...                      pixels={"a.jpg": 400, "b.jpg": 100, "c.jpg": 50})
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


def keep_order(ids: Iterable[str], pixels: dict[str, int], degree: dict[str, int] | None = None) -> list[str]:
    """Which copy to keep first: most matches, then most pixels, then the smallest id."""
    degree = degree or {}
    return sorted(ids, key=lambda i: (-degree.get(i, 0), -int(pixels.get(i, 0)), i))


def star_groups(edges: Iterable[tuple[str, str, float]], pixels: dict[str, int] | None = None,
                support: float = 0.0) -> list[Group]:
    """Groups of two or more images (see the module docstring), largest first.

    With ``support`` > 0 an image left out of every star (a representative whose matches all
    joined other representatives) joins the group where it matches at least two members and
    that ``support`` share of them; a look-alike in a chain matches one, so chains still cannot
    pass. Its confidence is then the weakest of the matches that admitted it.
    """
    neighbours: dict[str, dict[str, float]] = defaultdict(dict)
    for (a, b), conf in strongest_edges(edges).items():
        neighbours[a][b] = neighbours[b][a] = conf
    order = keep_order(neighbours, pixels or {}, {i: len(n) for i, n in neighbours.items()})
    reps = _representatives(order, neighbours)
    by_rep = {r: Group(r) for r in reps}
    rank = {i: n for n, i in enumerate(order)}
    for item in order:
        if item not in by_rep:
            rep = max((r for r in neighbours[item] if r in by_rep),
                      key=lambda r: (_shared(item, r, neighbours), neighbours[item][r], -rank[r]))
            by_rep[rep].members[item] = neighbours[item][rep]
    groups = [g for g in by_rep.values() if g.members]
    if support > 0:
        group_of = {i: g for g in groups for i in g.ids}
        _join_by_support([i for i in order if i not in group_of], neighbours, group_of, support)
    return sorted(groups, key=lambda g: (-len(g), g.keep))


def _representatives(order: list[str], neighbours: dict[str, dict[str, float]]) -> list[str]:
    """In keep order, each image that matches no representative taken before it: every other
    image matches at least one of them."""
    reps: list[str] = []
    taken: set[str] = set()
    for item in order:
        if item not in taken:
            reps.append(item)
            taken.add(item)
            taken.update(neighbours[item])
    return reps


def _shared(item: str, rep: str, neighbours: dict[str, dict[str, float]]) -> int:
    """How many of ``item``'s matches ``rep`` matches too."""
    return sum(1 for other in neighbours[item] if other in neighbours[rep])


def _join_by_support(left: list[str], neighbours: dict, group_of: dict, support: float) -> None:
    for item in left:
        by_group: dict[int, tuple] = {}
        for other, conf in neighbours[item].items():
            g = group_of.get(other)
            if g is not None:
                _, confs = by_group.setdefault(id(g), (g, []))
                confs.append(conf)
        best = max(by_group.values(), key=lambda gc: (len(gc[1]), min(gc[1])), default=None)
        if best and len(best[1]) >= max(2, support * len(best[0])):
            best[0].members[item] = min(best[1])
            group_of[item] = best[0]


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
