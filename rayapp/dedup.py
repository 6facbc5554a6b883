"""Group near-duplicates in a set of images and write an HTML report with thumbnails.

>>> groups = find_groups(codes, radius=31)          # list of lists of row indices
>>> write_report("out.html", groups, paths, codes)
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from encoders.base import hamming
from shards.index import make_index


def find_groups(codes: np.ndarray, radius: int) -> list[list[int]]:
    """Connected components of the 'within radius' graph (exact Hamming, FAISS flat range search)."""
    n = len(codes)
    if n == 0:
        return []
    index = make_index("flat", bits=codes.shape[1] * 8)
    index.add(np.arange(n, dtype=np.int64), codes)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (ids, _) in enumerate(index.range_search(codes, radius)):
        for j in ids:
            parent[root(int(j))] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def _thumb(path: str, size: int = 160) -> str:
    from encoders.decode import load_image
    img = load_image(path)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def write_report(out: str | Path, groups: list[list[int]], paths: list[str], codes: np.ndarray,
                 title: str = "neardup report") -> Path:
    """Self-contained HTML (thumbnails inline): one row per group, distance to the group's first image."""
    parts = [f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif}figure{display:inline-block;margin:6px;"
             "text-align:center;font-size:12px;max-width:170px;word-wrap:break-word}"
             ".g{border-bottom:1px solid #ccc;padding:8px}</style>",
             f"<h1>{html.escape(title)}</h1><p>{len(groups)} groups of near-duplicates "
             f"among {len(paths)} images.</p>"]
    for gi, group in enumerate(groups, 1):
        d = hamming(codes[group[:1]], codes[group])[0]
        parts.append(f"<div class=g><h3>group {gi} ({len(group)} images)</h3>")
        for i, dist in zip(group, d):
            parts.append(f"<figure><img src='{_thumb(paths[i])}'><figcaption>"
                         f"{html.escape(Path(paths[i]).name)}<br>distance {int(dist)}</figcaption></figure>")
        parts.append("</div>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    return out
