"""Shared image fixtures: real JPEG/PNG files on disk, made from seeds (no external data)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers_images import EDIT_KINDS, edited_copy, make_photo

PHOTO_COUNT = 12
_SIZES = [(640, 480), (480, 640), (800, 600), (512, 512)]


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """12 distinct photo-like images: photo_00..photo_11, every third one PNG, the rest JPEG."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(PHOTO_COUNT):
        img = make_photo(i, _SIZES[i % len(_SIZES)])
        if i % 3 == 2:
            img.save(root / f"photo_{i:02d}.png")
        else:
            img.save(root / f"photo_{i:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def edited_dir(photo_dir) -> Path:
    """Edited copies of photo_00..photo_03, one per kind in EDIT_KINDS, saved as JPEG q95 and
    named ``<original stem>__<kind>.jpg`` (the original is in photo_dir)."""
    from PIL import Image

    root = photo_dir.parent / "edited"
    root.mkdir(exist_ok=True)
    for src in sorted(photo_dir.iterdir())[:4]:
        with Image.open(src) as img:
            for kind in EDIT_KINDS:
                edited_copy(img, kind).save(root / f"{src.stem}__{kind}.jpg", quality=95)
    return root
