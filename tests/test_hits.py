"""The typed hit: built from a shard's reply, copied by the ranking, and a dict again only at
the JSON boundaries (HTTP, ``neardup search --json``), with the contracts' keys and order."""
from __future__ import annotations

import json

import pytest

from rayapp.hits import Hit


def test_a_shard_reply_becomes_a_hit_of_its_shard():
    hit = Hit.from_shard({"id": "a", "distance": 3, "meta": {"path": "/a.jpg"}, "score": 1.5}, 1)
    assert hit == Hit("a", 3, meta={"path": "/a.jpg"}, score=1.5, shard=1)
    with pytest.raises(TypeError, match="no field"):
        Hit.from_shard({"id": "a", "distance": 3, "colour": "red"}, 0)


def test_but_copies_and_leaves_the_original_alone():
    hit = Hit("a", 3, shard=0)
    moved = hit.but(weighted=2.5)
    assert (moved.weighted, hit.weighted) == (2.5, None)
    with pytest.raises(TypeError, match="no field"):
        hit.but(colour="red")


def test_json_has_the_set_fields_in_the_http_contracts_order():
    hit = Hit("a", 3, meta={"path": "/a.jpg"}, score=1.5, shard=1, cost=0.5, ref_view="center70",
              variant="flip", inliers=0, rank=2.0, confidence=0.9)
    assert json.dumps(hit.to_json()) == (
        '{"id": "a", "distance": 3, "meta": {"path": "/a.jpg"}, "score": 1.5, "shard": 1, "cost": 0.5, '
        '"ref_view": "center70", "variant": "flip", "inliers": 0, "rank": 2.0, "confidence": 0.9}')
    assert Hit("b", 7, shard=0, rank=7.0).to_json() == {"id": "b", "distance": 7, "shard": 0, "rank": 7.0}
    assert Hit.from_json({**hit.to_json(), "new_field": 1}) == hit  # a newer server's fields are ignored


def test_cli_json_names_the_path_instead_of_meta_and_shard():
    hit = Hit("a", 3, meta={"path": "/a.jpg"}, shard=1, weighted=2.0, variant="original", rank=2.0)
    assert json.dumps(hit.to_cli_json()) == (
        '{"id": "a", "path": "/a.jpg", "distance": 3, "rank": 2.0, "weighted": 2.0, "variant": "original"}')
    assert Hit("b", 7).to_cli_json() == {"id": "b", "path": None, "distance": 7}


def test_matched_as_says_how_a_hit_matched():
    assert Hit("a", 0).matched_as() == Hit("a", 0, variant="original", inliers=3).matched_as() == "original"
    assert Hit("a", 0, variant="flip", ref_view="center70", inliers=57).matched_as() == \
        "flip, its center70, 57 keypoints"
