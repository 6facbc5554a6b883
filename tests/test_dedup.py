"""Deduplicating a collection: the paging shards walk, star groups, and the job on real photos
through a real local Ray (one Ray for the module), from Python and the imagededup-style API."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayapp.dedup_overlap import MIN_SHARE
from rayapp.groups import pair_scores, star_groups
from shards.store import IdStore, hash_ids
from tests.helpers_images import edited_copy, look_alike

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "rayapp" / "samples").glob("*.jpg"))
EDITS = ("jpeg", "resize", "crop", "text")
LOOK_ALIKE = "look-alike.jpg"


def _store(n: int) -> IdStore:
    s = IdStore(4)
    ids = [f"x{i}" for i in range(n)]
    s.put_many(ids, hash_ids(ids), np.zeros((n, 4), np.uint8), [""] * n)
    return s


def test_pages_cover_every_live_key_once_in_order():
    s = _store(1000)
    for i in range(0, 1000, 7):
        s.delete(hash_ids([f"x{i}"])[0])
    starts = s.page_starts(64)
    seen = []
    for after in starts:
        keys, items = s.page(after, 64)
        assert len(keys) <= 64 and list(keys) == sorted(keys)
        seen += [it.id for it in items]
    live = {f"x{i}" for i in range(1000) if i % 7}
    assert len(seen) == len(live) and set(seen) == live
    assert s.page(None, 10)[0].tolist() == sorted(hash_ids(sorted(live)).tolist())[:10]


def test_star_groups_do_not_chain_look_alikes():
    # a-b-c-d is a chain of look-alikes; only b matches everyone in its star
    edges = [("a", "b", 0.999), ("b", "c", 0.995), ("c", "d", 0.995), ("x", "y", 0.99)]
    groups = star_groups(edges, pixels={"a": 10, "b": 50, "c": 20, "d": 30, "x": 5, "y": 9})
    assert [(g.keep, sorted(g.members)) for g in groups] == [("b", ["a", "c"]), ("y", ["x"])]
    assert all(len(g) <= 3 for g in groups)  # single linkage would have made a-b-c-d one group
    scores = pair_scores(groups, {"a": "A", "b": "A", "c": "C", "d": "C", "x": "X", "y": "X"})
    assert scores["pair_precision"] == 0.5  # ab and xy right, bc and ac wrong
    assert scores["largest"] == 3


def test_a_copy_joins_the_representative_it_shares_most_matches_with():
    # B and R: a blue and a red shirt on one sheet; b1-b3 copies of B, r1-r3 of R, and r1 also
    # passed for a copy of B (a look-alike match). Taken first, B would have taken r1 too.
    copies = [(o, f"{o.lower()}{n}") for o in "BR" for n in (1, 2, 3)]
    siblings = [(f"{o}1", f"{o}{n}") for o in "br" for n in (2, 3)]
    edges = [(a, b, 0.999) for a, b in copies + siblings] + [("B", "r1", 0.999)]
    pixels = {"B": 100, "R": 90, **{b: 10 for _, b in copies}}
    groups = star_groups(edges, pixels)
    assert [(g.keep, sorted(g.members)) for g in groups] == [("B", ["b1", "b2", "b3"]), ("R", ["r1", "r2", "r3"])]


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """Eight sample photos, edited copies of the first two, a mirror of the first (names say
    whose copy each is) and a look-alike of the first: its background around another subject."""
    from PIL import Image, ImageOps
    root = tmp_path_factory.mktemp("dedup") / "photos"
    root.mkdir()
    for f in SAMPLES[:8]:
        shutil.copy(f, root / f.name)
    for f in SAMPLES[:2]:
        with Image.open(f) as im:
            for kind in EDITS[:3]:
                edited_copy(im, kind).save(root / f"{f.stem}__{kind}.jpg", quality=90)
    with Image.open(SAMPLES[0]) as im:
        ImageOps.mirror(im.convert("RGB")).save(root / f"{SAMPLES[0].stem}__mirror.jpg", quality=90)
        with Image.open(SAMPLES[15]) as other:
            look_alike(im, other).save(root / LOOK_ALIKE, quality=90)
    return root


def test_find_duplicates_and_the_report(ray_local, collection, tmp_path):
    from rayapp.dedup import find_duplicates, plot_duplicates
    out = tmp_path / "job"
    dupes = find_duplicates(image_dir=str(collection), min_confidence=0.99, out_dir=str(out))
    assert set(dupes) == {p.name for p in collection.iterdir()}
    for f in SAMPLES[:2]:
        found = {name for name, conf in dupes[f.name]}
        assert {f"{f.stem}__{k}.jpg" for k in EDITS[:3]} <= found, dupes[f.name]
        assert all(0.99 <= conf <= 1.0 for _, conf in dupes[f.name])
    for f in SAMPLES[2:8]:
        assert dupes[f.name] == [], dupes[f.name]  # unrelated photos: no false match
    assert dupes[LOOK_ALIKE] == [], dupes[LOOK_ALIKE]  # its background matched; its overlap did not

    edges = pq.read_table(out / "edges.parquet").to_pylist()
    pairs = [(e["a"], e["b"]) for e in edges]
    assert len(pairs) == len(set(pairs)) and all(a < b for a, b in pairs)
    assert all(e["overlap_colour"] is None or e["overlap_colour"] >= MIN_SHARE for e in edges)
    dropped = pq.read_table(out / "look_alikes.parquet").to_pylist()
    assert all(LOOK_ALIKE in (e["a"], e["b"]) and e["overlap_colour"] < MIN_SHARE for e in dropped), dropped
    mirror = f"{SAMPLES[0].stem}__mirror.jpg"
    assert mirror in {name for name, _ in dupes[SAMPLES[0].name]}
    # the mirror matched through a mirrored view and was verified by the mirrored keypoints:
    # most of its keypoints (the keypoints as given reach tens on this near-symmetric shirt)
    flipped = [e["variant"] for e in edges if mirror in (e["a"], e["b"]) and "flip" in e["variant"]]
    assert flipped and int(flipped[0].split(", ")[-1].split()[0]) >= 100, flipped
    groups = pq.read_table(out / "groups.parquet").to_pylist()
    keeps = {r["id"] for r in groups if r["keep"]}
    assert keeps == {f.name for f in SAMPLES[:2]}  # the originals are the largest copies
    assert (out / "groups.csv").read_text().startswith('"group","id","path","keep","confidence_to_keep"')

    page = plot_duplicates(dupes, image_dir=str(collection), outfile=str(tmp_path / "dupes.html"))
    html = page.read_text()
    assert html.count("<div class=g>") == 2 and "data:image/jpeg;base64," in html
    assert "confidence" in html


def test_find_duplicates_to_remove_keeps_one_copy_of_each(ray_local, collection):
    from rayapp.dedup import find_duplicates_to_remove
    remove = find_duplicates_to_remove(image_dir=str(collection))
    copies = {f"{f.stem}__{k}.jpg" for f in SAMPLES[:2] for k in EDITS[:3]} | {f"{SAMPLES[0].stem}__mirror.jpg"}
    assert set(remove) == copies and remove == sorted(remove)  # the originals, the unrelated and the look-alike stay


def test_the_report_shows_the_pairs_set_aside_as_look_alikes(ray_local, collection, tmp_path):
    from rayapp.dedup import DedupOptions, dedup_paths
    out = tmp_path / "job"
    report = dedup_paths([str(collection)], DedupOptions(out_dir=str(out), min_confidence=0.3, progress=False))
    assert report.look_alikes >= 1
    page = (out / "look_alikes.html").read_text()
    assert LOOK_ALIKE in page and page.count("data:image/jpeg;base64,") == 2 * report.look_alikes
    assert "in colour too" in page and "look_alikes.html" in (out / "report.html").read_text()


def test_support_lets_a_copy_join_through_its_siblings_but_not_a_chain():
    # k is the original; c1..c3 copies; c4 matches c1 and c2 but not k (taken before it could
    # lead a star); z matches only c3 (a look-alike of one member)
    edges = [("k", "c1", 1.0), ("k", "c2", 1.0), ("k", "c3", 1.0), ("c4", "c1", 0.995),
             ("c4", "c2", 0.992), ("z", "c3", 0.999)]
    plain = star_groups(edges)
    assert [g.keep for g in plain] == ["k"] and "c4" not in plain[0].members
    (g,) = star_groups(edges, support=0.5)
    assert g.members["c4"] == 0.992 and "z" not in g.members


def test_the_overlap_check_runs_as_ray_tasks_and_resumes(ray_local, collection, tmp_path):
    from rayapp.dedup_overlap import check_overlaps, split_look_alikes
    original, copy = SAMPLES[0].name, f"{SAMPLES[0].stem}__crop.jpg"
    edges = [{"a": original, "b": copy}, {"a": original, "b": LOOK_ALIKE}]
    paths = {name: str(collection / name) for name in (original, copy, LOOK_ALIKE)}
    checks = check_overlaps(edges, paths, tmp_path, max_pixels=50_000_000, progress=False)
    kept, dropped = split_look_alikes(edges, checks)
    assert [e["b"] for e in kept] == [copy] and kept[0]["overlap_colour"] >= MIN_SHARE
    assert [e["b"] for e in dropped] == [LOOK_ALIKE] and dropped[0]["overlap_colour"] < MIN_SHARE
    (part,) = tmp_path.glob("overlap-c-*.parquet")
    written = part.stat().st_mtime_ns
    assert check_overlaps(edges, paths, tmp_path, max_pixels=50_000_000, progress=False) == checks
    assert part.stat().st_mtime_ns == written  # a re-run reads the finished batch back
    missing = check_overlaps([{"a": original, "b": "gone.jpg"}], {original: paths[original]}, tmp_path,
                             max_pixels=50_000_000, progress=False)
    assert not split_look_alikes([{"a": original, "b": "gone.jpg"}], missing)[1]  # unreadable: kept


def test_stored_records_find_a_mirror_when_the_index_keeps_mirrors(ray_local, collection, tmp_path):
    """Over stored records nothing is read again, so a mirrored copy is found only when the index
    stores each image's mirror (``storage.ref_views: [center70, mirror]``): its code, and its own
    keypoints to verify it by."""
    import uuid
    from rayapp.cluster import kill_shards
    from rayapp.config import load_config
    from rayapp.dedup import DedupOptions, run_dedup
    from rayapp.ingest import IngestOptions, run_ingest
    cfg = load_config(env={}, overrides={"storage": {
        "index_dir": str(tmp_path / "index"), "num_shards": 2, "ref_views": ["center70", "mirror"],
        "namespace": f"mirror-{uuid.uuid4().hex[:8]}"}})
    run_ingest(cfg, [str(collection)], IngestOptions(progress=False))
    run_dedup(cfg, DedupOptions(out_dir=str(tmp_path / "job"), views="stored", progress=False))
    edges = pq.read_table(tmp_path / "job" / "edges.parquet").to_pylist()
    kill_shards(cfg)
    mirror = f"{SAMPLES[0].stem}__mirror.jpg"
    (edge,) = [e for e in edges if {e["a"], e["b"]} == {SAMPLES[0].name, mirror}]
    assert edge["confidence"] >= 0.99 and "mirror" in edge["variant"], edge
    assert all(LOOK_ALIKE not in (e["a"], e["b"]) for e in edges)
