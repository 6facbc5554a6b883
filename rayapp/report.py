"""A self-contained, paginated HTML report of duplicate groups, thumbnails inline.

Each group shows the copy to keep first, then every member with its calibrated confidence of
being a copy of the kept one and how it matched (the query view, the stored crop, keypoints).
Pages hold ``per_page`` groups: ``report.html``, ``report-2.html``, ... The pairs the look-alike
check set aside (``rayapp.dedup_overlap``) get a page of their own, ``look_alikes.html``, so a
person can see what was not grouped and why.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Callable, Sequence

from rayapp.groups import Group

_STYLE = ("body{font-family:system-ui,sans-serif;margin:16px;color:#222}"
          "figure{display:inline-block;margin:6px;vertical-align:top;text-align:center;"
          "font-size:12px;width:170px;word-wrap:break-word}"
          "figure img{max-width:160px;max-height:160px;border:1px solid #ccc}"
          "figure.keep img{border:3px solid #2a7}.g{border-bottom:1px solid #ddd;padding:8px 0}"
          ".c{font-weight:bold}.nav a{margin-right:8px}.muted{color:#777}")


def thumbnail(path: str | None, size: int = 160) -> str | None:
    """A JPEG data URI of the image at ``path``, or None when it cannot be read here."""
    from encoders.decode import load_image
    if not path:
        return None
    try:
        img = load_image(path)
    except (OSError, ValueError):
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(item: str, path: str | None, caption: str, keep: bool) -> str:
    src = thumbnail(path)
    img = f"<img src='{src}' alt='{html.escape(item)}'>" if src else "<div class=muted>(no preview)</div>"
    return (f"<figure class='{'keep' if keep else ''}'>{img}<figcaption>{html.escape(item)}<br>"
            f"{caption}</figcaption></figure>")


def _group_html(n: int, group: Group, path_of: Callable[[str], str | None],
                how: Callable[[str, str], str]) -> str:
    parts = [f"<div class=g><h3>group {n} ({len(group)} images)</h3>",
             _figure(group.keep, path_of(group.keep), "<span class=c>keep</span>", True)]
    for m in group.ids[1:]:
        conf = group.members[m]
        caption = f"<span class=c>{conf:.4f}</span> confidence"
        detail = how(group.keep, m)
        caption += f"<br><span class=muted>{html.escape(detail)}</span>" if detail else ""
        parts.append(_figure(m, path_of(m), caption, False))
    return "".join(parts) + "</div>"


def page_name(page: int) -> str:
    return "report.html" if page == 1 else f"report-{page}.html"


def write_report(out_dir: str | Path, groups: Sequence[Group], path_of: Callable[[str], str | None],
                 how: Callable[[str, str], str] = lambda a, b: "", title: str = "neardup duplicates",
                 summary: str = "", per_page: int = 50, links: Sequence[tuple[str, str]] = ()) -> Path:
    """Write the report's pages into ``out_dir``; returns the first page's path. ``links``:
    (file, label) pairs shown under the summary on every page."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = max(1, -(-len(groups) // per_page))
    nav = ("<p class=nav>" + "".join(f"<a href='{page_name(p)}'>page {p}</a>" for p in range(1, pages + 1))
           + "</p>") if pages > 1 else ""
    if links:
        nav += "<p class=nav>" + "".join(f"<a href='{html.escape(f)}'>{html.escape(t)}</a>" for f, t in links) + "</p>"
    for p in range(1, pages + 1):
        chunk = groups[(p - 1) * per_page:p * per_page]
        body = [f"<!doctype html><meta charset=utf-8><title>{html.escape(title)} ({p}/{pages})</title>",
                f"<style>{_STYLE}</style><h1>{html.escape(title)}</h1>",
                f"<p>{html.escape(summary)}</p>" if summary else "", nav]
        body += [_group_html((p - 1) * per_page + i + 1, g, path_of, how) for i, g in enumerate(chunk)]
        if not groups:
            body.append("<p>No duplicates found.</p>")
        (out_dir / page_name(p)).write_text("\n".join(body))
    return out_dir / page_name(1)


LOOK_ALIKES_PAGE = "look_alikes.html"


def write_look_alikes(out_dir: str | Path, pairs: Sequence[dict], path_of: Callable[[str], str | None],
                      limit: int = 200) -> Path:
    """``look_alikes.html``: the set-aside pairs (rows of ``look_alikes.parquet``), most confident
    first, each side by side with its confidence and its aligned overlap's agreeing shares (in
    texture; in texture and colour), at most ``limit`` of them."""
    out = Path(out_dir) / LOOK_ALIKES_PAGE
    out.parent.mkdir(parents=True, exist_ok=True)
    ranked = sorted(pairs, key=lambda e: (-(e.get("confidence") or 0.0), e["a"], e["b"]))
    shown = f" The {limit} most confident are shown." if len(pairs) > limit else ""
    body = [f"<!doctype html><meta charset=utf-8><title>neardup look-alikes</title><style>{_STYLE}</style>",
            "<h1>Matches set aside as look-alikes</h1>",
            f"<p>{len(pairs)} matched pairs whose images, aligned on their keypoints, disagree over most of "
            "their overlap: different subjects on one background, or two shots of one scene. They are in "
            f"look_alikes.parquet and in no group.{shown} <a href='{page_name(1)}'>back to the groups</a></p>"]
    for n, e in enumerate(ranked[:limit], 1):
        conf = "" if e.get("confidence") is None else f"{e['confidence']:.4f} confidence, "
        shares = (f"agree: {e['overlap']:.0%} in texture, {e['overlap_colour']:.0%} in colour too"
                  if e.get("overlap") is not None and e.get("overlap_colour") is not None else "")
        caption = f"<span class=muted>{conf}{html.escape(e.get('variant') or '')}<br>{shares}</span>"
        body += [f"<div class=g><h3>pair {n}</h3>", _figure(e["a"], path_of(e["a"]), "", False),
                 _figure(e["b"], path_of(e["b"]), caption, False), "</div>"]
    out.write_text("\n".join(body))
    return out
