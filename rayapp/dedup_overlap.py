"""The dedup job's last check: each matched pair's two files read again and their aligned overlap
compared (``encoders.overlap``), so look-alikes that keypoints passed leave the edges.

Photos of different shirts on one bed sheet share the sheet: keypoint verification counts a
dozen inliers on it, and the pair is rated a copy. Aligned on those inliers, a copy agrees with
its source over most of the overlap and a look-alike only on the shared background. A pair
whose alignment has at least ``MIN_ALIGNED`` inliers and whose textured tiles agree (in texture,
and in colour up to one global colour map) under ``MIN_SHARE`` of the time is moved from
``edges.parquet`` to ``look_alikes.parquet``; a pair that cannot be aligned (or whose file
cannot be read) keeps its edge: no evidence against it.

The check runs after the pages, over the merged edges (each pair once), as Ray tasks of
``BATCH`` pairs spread over the cluster. Each task writes its answers as a Parquet part named
by its pairs, so a killed job re-checks only the batches it had not finished.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from rayapp.dedup_pages import EDGE_SCHEMA, write_part

MIN_ALIGNED = 8    # fewer alignment inliers: too weak an alignment to judge the overlap by
MIN_SHARE = 0.28   # agreeing share (texture and colour) of the textured overlap under which a pair is a look-alike
BATCH = 64         # pairs per task
CHECK_SCHEMA = pa.schema([("a", pa.string()), ("b", pa.string()), ("overlap", pa.float64()),
                          ("overlap_colour", pa.float64()), ("aligned", pa.int32())])
CHECKED_SCHEMA = pa.schema([*EDGE_SCHEMA, pa.field("overlap", pa.float64()), pa.field("overlap_colour", pa.float64())])
PART_PREFIX = "overlap-c-"  # parts of the check with colour; those of an older check are not read back


def look_alike(check: dict | None) -> bool:
    """True when a pair's check (``CHECK_SCHEMA`` row) says its aligned overlap disagrees."""
    return (check is not None and check["overlap_colour"] is not None and check["aligned"] >= MIN_ALIGNED
            and check["overlap_colour"] < MIN_SHARE)


class _FeatureCache:
    """Each file's ``encoders.overlap.features`` as given or mirrored, computed once per task (a
    kept image is in many of its group's pairs, and the edges come sorted by their first image).
    The last decoded file is kept, so its two orientations cost one decode."""

    def __init__(self, max_pixels: int):
        self.max_pixels, self.seen, self.last = max_pixels, {}, (None, None)

    def _image(self, path: str | None):
        from encoders.decode import load_image
        if self.last[0] != path or self.last[1] is None:
            try:
                self.last = (path, load_image(path or "", max_pixels=self.max_pixels))
            except (OSError, ValueError):
                self.last = (path, None)
        return self.last[1]

    def get(self, path: str | None, mirrored: bool):
        from PIL import ImageOps
        from encoders.overlap import features
        if (path, mirrored) not in self.seen:
            image = self._image(path)
            self.seen[(path, mirrored)] = None if image is None else features(
                ImageOps.mirror(image) if mirrored else image)
        return self.seen[(path, mirrored)]


def check_batch(rows: list[tuple], max_pixels: int, part: str) -> int:
    """Check pairs (a, path of a, b, path of b) and write their CHECK_SCHEMA rows to ``part``: the
    first image, as given or mirrored (whichever aligns on more inliers), onto the second."""
    from encoders.overlap import aligned_agreement
    cache, out = _FeatureCache(max_pixels), []
    for a, path_a, b, path_b in rows:
        found = aligned_agreement([cache.get(path_a, False), cache.get(path_a, True)], cache.get(path_b, False))
        out.append({"a": a, "b": b, "overlap": None if found is None else round(found.share, 4),
                    "overlap_colour": None if found is None else round(found.colour_share, 4),
                    "aligned": 0 if found is None else found.inliers})
    write_part(Path(part), out, CHECK_SCHEMA)
    return len(out)


def _batches(edges: list[dict], paths: dict[str, str | None], parts: Path) -> list[tuple[str, list]]:
    rows = [(e["a"], paths.get(e["a"]), e["b"], paths.get(e["b"])) for e in edges]
    out = []
    for i in range(0, len(rows), BATCH):
        chunk = rows[i:i + BATCH]
        name = hashlib.sha1(repr([(a, b) for a, _, b, _ in chunk]).encode()).hexdigest()[:16]
        out.append((str(parts / f"{PART_PREFIX}{name}.parquet"), chunk))
    return out


def check_overlaps(edges: list[dict], paths: dict[str, str | None], parts: Path, max_pixels: int,
                   progress: bool = True) -> dict[tuple[str, str], dict]:
    """(a, b) -> its check, for every edge; batches already checked by a killed run are read back."""
    batches = _batches(edges, paths, parts)
    todo = [(part, rows) for part, rows in batches if not Path(part).exists()]
    free_cpus = ray.available_resources().get("CPU", 0)
    task = ray.remote(check_batch).options(num_cpus=1 if free_cpus >= 1 else 0, scheduling_strategy="SPREAD",
                                           max_retries=3)
    limit = max(1, int(free_cpus)) * 2  # tasks in flight: enough to keep every free CPU busy
    pending: list = []
    with tqdm(total=len(batches), initial=len(batches) - len(todo), unit="batch", desc="overlap",
              disable=not progress) as bar:
        while todo or pending:
            while todo and len(pending) < limit:
                part, rows = todo.pop()
                pending.append(task.remote(rows, max_pixels, part))
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
            bar.update(len(done))
    checks = {}
    for part, _ in batches:
        for row in pq.read_table(part, schema=CHECK_SCHEMA).to_pylist():
            checks[(row["a"], row["b"])] = row
    return checks


def split_look_alikes(edges: list[dict], checks: dict[tuple[str, str], dict]) -> tuple[list[dict], list[dict]]:
    """Edges -> (kept, look-alikes), each with its ``overlap`` and ``overlap_colour`` shares (None
    where unchecked)."""
    kept, dropped = [], []
    for e in edges:
        check = checks.get((e["a"], e["b"]))
        row = {**e, **{k: None if check is None else check[k] for k in ("overlap", "overlap_colour")}}
        (dropped if look_alike(check) else kept).append(row)
    return kept, dropped
