"""Golden answers: a fixed small index, fixed edited queries, the expected hits as JSON.

Refactors of the query path (``rayapp.searcher``, ``rayapp.ranking``, the router and the shards)
must not change what a user gets: the same hits in the same order with the same distances,
rank values, views and confidences. The index is built and searched through the shipped CLI
(``neardup index`` then ``neardup search --json``), as a user would.

After an intended change of answers (new weights, a new rank policy), regenerate the file and
say why in the commit: ``NEARDUP_UPDATE_GOLDEN=1 pytest tests/test_golden.py``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageOps

from tests.helpers_images import make_photo

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "rayapp" / "samples").glob("*.jpg"))[:16]
GOLDEN = ROOT / "tests" / "golden" / "search.json"
RANK_TOLERANCE = 0.05  # float noise of the encoder across BLAS builds, far under any real change
CONFIDENCE_TOLERANCE = 0.02
INLIER_TOLERANCE = 2


def _edits() -> dict[str, Image.Image]:
    """Seven queries: six edited copies of stored samples and one unrelated photo."""
    def open_rgb(i: int) -> Image.Image:
        with Image.open(SAMPLES[i]) as im:
            return im.convert("RGB")
    crop = open_rgb(0)
    w, h = crop.size
    text = open_rgb(4).copy()
    ImageDraw.Draw(text).rectangle((0, text.height * 4 // 5, text.width, text.height), fill=(255, 255, 255))
    canvas = Image.new("RGB", (900, 700), (40, 90, 160))
    canvas.paste(open_rgb(5).resize((500, 400)), (250, 150))
    return {"crop_jpeg.jpg": crop.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
            "mirror.jpg": ImageOps.mirror(open_rgb(1)),
            "turned.jpg": open_rgb(2).rotate(90, expand=True),
            "faded.jpg": Image.blend(open_rgb(3), Image.new("RGB", open_rgb(3).size, (255, 255, 255)), 0.5),
            "banner.jpg": text,
            "pasted.jpg": canvas,
            "unrelated.jpg": make_photo(7)}


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> dict[str, list[dict]]:
    """Every query's top 5 through `neardup index` (2 shards) and `neardup search --json`."""
    root = tmp_path_factory.mktemp("golden")
    (root / "images").mkdir()
    for f in SAMPLES:
        shutil.copy(f, root / "images" / f.name)
    queries = []
    for name, img in _edits().items():
        img.save(root / name, quality=40 if name == "crop_jpeg.jpg" else 90)
        queries.append(root / name)
    neardup = [sys.executable, "-m", "rayapp.cli"]
    run = dict(capture_output=True, text=True, cwd=ROOT, timeout=600)
    r = subprocess.run([*neardup, "index", root / "images", "--index-dir", root / "index", "--shards", "2",
                        "--quiet"], **run)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*neardup, "search", *queries, "--index-dir", root / "index", "--k", "5", "--json"], **run)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert not any(ln["partial"] for ln in lines)
    return {Path(ln["query"]).name: [{k: v for k, v in hit.items() if k != "path"} for hit in ln["results"]]
            for ln in lines}


def test_answers_match_the_golden_file(answers):
    if os.environ.get("NEARDUP_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert sorted(answers) == sorted(expected)
    for query, hits in expected.items():
        got = answers[query]
        assert [h["id"] for h in got] == [h["id"] for h in hits], query
        for g, e in zip(got, hits):
            _same_hit(query, g, e)


def _same_hit(query: str, got: dict, expected: dict) -> None:
    where = f"{query} -> {expected['id']}"
    assert set(got) == set(expected), where
    for key in ("distance", "variant", "ref_view"):
        assert got.get(key) == expected.get(key), f"{where}: {key}"
    assert abs(got["rank"] - expected["rank"]) <= RANK_TOLERANCE, where
    if "confidence" in expected:
        assert abs(got["confidence"] - expected["confidence"]) <= CONFIDENCE_TOLERANCE, where
    if "inliers" in expected:
        assert abs(got["inliers"] - expected["inliers"]) <= INLIER_TOLERANCE, where


def test_the_copies_are_found(answers):
    """The golden file itself is sane: each edited copy's top hit is its original."""
    originals = {"crop_jpeg.jpg": 0, "mirror.jpg": 1, "turned.jpg": 2, "faded.jpg": 3, "banner.jpg": 4,
                 "pasted.jpg": 5}
    for query, i in originals.items():
        assert answers[query][0]["id"] == SAMPLES[i].name, query
