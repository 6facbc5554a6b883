"""What spatial verification costs a query, against the shard search it follows, in one run.

    python -m bench.verify                    # 100k entries -> bench/results/verify_<date>.json
    python -m bench.verify --entries 5000     # smoke size

One in-process ShardActor holding code, side vector and keypoints per entry (the keypoints of
the bundled sample photos, in turn; in its blob log, ``shards.blobs``). Per query (an off-centre crop of a sample, re-encoded as
JPEG): the shard search with side-vector scoring (6 views x 40 candidates, as ``bench.rerank``),
extracting the query's keypoints (as given and mirrored), and verifying its top
``VERIFY_DEPTH`` hits.
"""
from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import common
from encoders.keypoints import extract, extract_query
from shards.actor import ShardActor
from formats.vectors import quantize
from shards.vectors import records
from shards.verify import KEYPOINT_BYTES, VERIFY_DEPTH

SAMPLES = common.REPO_ROOT / "rayapp" / "samples"


def _crop_jpeg(path: Path, rng: np.random.Generator) -> Image.Image:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    x, y = int(rng.integers(0, w // 3)), int(rng.integers(0, h // 3))
    buf = io.BytesIO()
    img.crop((x, y, x + int(w * 0.67), y + int(h * 0.67))).save(buf, "JPEG", quality=50)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def run(argv: list[str] | None = None) -> Path:
    """Measure and write ``bench/results/verify_<date>.json`` -> its path."""
    args = common.small_bench_args("python -m bench.verify", __doc__, 100_000, 1000, argv)
    rng = np.random.default_rng(0)
    photos = sorted(SAMPLES.glob("*.jpg"))
    kps = np.stack([extract(Image.open(p).convert("RGB")) for p in photos])
    codes = rng.integers(0, 256, (args.entries, 16), dtype=np.uint8)
    vectors = quantize(rng.normal(size=(args.entries, 128)).astype(np.float32))
    ids = [f"img-{i}" for i in range(args.entries)]
    search_ms, extract_ms, verify_ms = [], [], []
    with tempfile.TemporaryDirectory() as root:
        shard = ShardActor(0, root, 128, snapshot_every=10 ** 9, vector_bytes=128,
                           keypoint_bytes=KEYPOINT_BYTES)
        for s in range(0, args.entries, 20_000):
            sl = slice(s, s + 20_000)
            rows = np.arange(s, min(s + 20_000, args.entries)) % len(kps)
            shard.add(ids[sl], records(codes[sl], vectors[sl], kps[rows]))
        shard.snapshot()  # the store is then memory-mapped, as after a restart
        for i in range(args.queries):
            pick = rng.choice(args.entries, 6)
            img = _crop_jpeg(photos[int(pick[0]) % len(photos)], rng)
            t0 = time.perf_counter()
            (hits, *_) = shard.search(codes[pick] ^ 3, 40, vectors=vectors[pick])
            t1 = time.perf_counter()
            query = extract_query(img)  # as given and mirrored
            t2 = time.perf_counter()
            shard.verify([h["id"] for h in hits[:VERIFY_DEPTH]], query)
            t3 = time.perf_counter()
            search_ms.append((t1 - t0) * 1000)
            extract_ms.append((t2 - t1) * 1000)
            verify_ms.append((t3 - t2) * 1000)
        stats = shard.stats()
        store_bytes, mapped, blob_bytes = shard.store_bytes, stats["mapped_bytes"], stats["keypoint_file_bytes"]
        shard.close()
    result = {"machine": common.machine_info(), "entries": args.entries, "views_per_query": 6,
              "candidates_per_view": 40, "verified_per_query": VERIFY_DEPTH,
              "store_bytes_per_entry": store_bytes, "store_bytes_without_keypoints": 16 + 128,
              "keypoint_bytes_per_image": KEYPOINT_BYTES, "store_mapped_bytes": mapped,
              "keypoint_file_bytes": blob_bytes,
              "search": common.latency_percentiles(search_ms),
              "extract_query_keypoints": common.latency_percentiles(extract_ms),
              "verify_top": common.latency_percentiles(verify_ms)}
    result["verify_over_search_p50"] = round(result["verify_top"]["p50_ms"] / result["search"]["p50_ms"], 3)
    out = common.write_json(Path(args.out_dir) / f"verify_{common.today()}.json", result)
    print(json.dumps({k: result[k] for k in ("search", "extract_query_keypoints", "verify_top",
                                             "verify_over_search_p50")}))
    return out


main = common.main_for(run)


if __name__ == "__main__":
    raise SystemExit(main())
