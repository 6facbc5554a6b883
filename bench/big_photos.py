"""What a big photo costs an image query before its codes are searched, at working size and at
full size, in the same run.

A phone photo is 12 megapixels; every step after decoding (the encoder's 128-pixel input, the
finders at 160-192, keypoints at 320) works far below that. ``encoders.decode.load_image``
therefore brings a photo with a long side of ``2 * WORK_SIDE`` or more to a long side in
[WORK_SIDE, 2 * WORK_SIDE), decoding a JPEG at the reduced scale directly. Here each bundled
sample is enlarged to a long side of 640-4000 pixels and saved as a JPEG (quality 90), and the
ingress's own steps are timed on it, sides alternating: decode (``load_image``), the query's
views (``encoders.tta.query_variants``) and its keypoints (``extract_query``), with
``work_side`` at its default and at None (full size, as before). Also reported: how many bits of
the code the working size moves (the code of the same photo loaded at full size), and with
``--formats`` what ``load_image`` costs on the same photos stored as HEIC, AVIF and WebP beside
JPEG (their decoders, unlike JPEG's, cannot decode at a reduced scale).

    python -m bench.big_photos            # or: neardup bench big-photos
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from bench.common import REPO_ROOT, RESULTS_DIR, machine_info, today, utc_now, write_json
from encoders.decode import WORK_SIDE

SIDES = (640, 1280, 2000, 4000)
MODES = {"working size": WORK_SIDE, "full size": None}
FORMATS = {"JPEG": {"quality": 90}, "HEIF": {"quality": 80}, "AVIF": {"quality": 70}, "WEBP": {"quality": 85}}


def _photos(side: int, count: int, fmt: str = "JPEG") -> list[bytes]:
    """The first ``count`` bundled samples enlarged to a long side of ``side``, saved as ``fmt``."""
    import encoders.decode  # noqa: F401  (registers the HEIF opener and saver)
    out = []
    for path in sorted((REPO_ROOT / "rayapp" / "samples").glob("*.jpg"))[:count]:
        img = Image.open(path).convert("RGB")
        big = img.resize((side, round(side * img.size[1] / img.size[0])), Image.BICUBIC)
        buf = io.BytesIO()
        big.save(buf, fmt, **FORMATS[fmt])
        out.append(buf.getvalue())
    return out


def decode_by_format(sides: tuple[int, ...], count: int, rounds: int) -> list[dict]:
    """Median ``load_image`` ms of the same photos in each of FORMATS, and each one's ratio to
    JPEG's, the formats alternating round by round."""
    from encoders.decode import load_image
    table = []
    for side in sides:
        photos = {fmt: _photos(side, count, fmt) for fmt in FORMATS}
        ms: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
        for r in range(rounds):
            for fmt in (list(FORMATS) if r % 2 == 0 else list(FORMATS)[::-1]):
                for data in photos[fmt]:
                    t0 = time.perf_counter()
                    load_image(data)
                    ms[fmt].append((time.perf_counter() - t0) * 1e3)
        row = {"long_side": side, "photos": count,
               **{fmt: {"decode_ms": round(float(np.median(v)), 2),
                        "bytes_median": int(np.median([len(d) for d in photos[fmt]]))} for fmt, v in ms.items()}}
        for fmt in FORMATS:
            row[fmt]["ratio_to_jpeg"] = round(row[fmt]["decode_ms"] / row["JPEG"]["decode_ms"], 2)
        table.append(row)
        print(f"{side:5d} px decode: " + ", ".join(f"{f} {row[f]['decode_ms']:.1f} ms" for f in FORMATS))
    return table


def _query_steps(data: bytes, enc, work_side: int | None) -> tuple[dict[str, float], np.ndarray]:
    """One query's decode, views and keypoints -> ms per step, and its code as given."""
    from encoders.decode import load_image
    from encoders.keypoints import extract_query
    from encoders.tta import query_variants
    t0 = time.perf_counter()
    img = load_image(data, work_side=work_side)
    t1 = time.perf_counter()
    arrays, _ = query_variants(img, enc.preprocess, "flip_turns", True)
    t2 = time.perf_counter()
    extract_query(img)
    t3 = time.perf_counter()
    ms = {"decode": (t1 - t0) * 1e3, "views": (t2 - t1) * 1e3, "keypoints": (t3 - t2) * 1e3}
    return ms, arrays[0]


def run(count: int, rounds: int, formats: bool = False) -> dict:
    from encoders.base import hamming
    from encoders.registry import get_encoder
    enc = get_encoder("deephash", device="cpu")
    table = []
    for side in SIDES:
        photos = _photos(side, count)
        ms = {m: {"decode": [], "views": [], "keypoints": []} for m in MODES}
        inputs = {m: [] for m in MODES}
        for r in range(rounds):
            for m in (MODES if r % 2 == 0 else list(MODES)[::-1]):
                for data in photos:
                    steps, first = _query_steps(data, enc, MODES[m])
                    for k, v in steps.items():
                        ms[m][k].append(v)
                    if r == 0:
                        inputs[m].append(first)
        codes = {m: enc.encode_vectors(np.concatenate(inputs[m]))[0] for m in MODES}
        row = {"long_side": side, "photos": len(photos)}
        for m in MODES:
            row[m] = {k: round(float(np.median(v)), 2) for k, v in ms[m].items()}
            row[m]["total"] = round(sum(row[m][k] for k in ("decode", "views", "keypoints")), 2)
        row["ratio_total"] = round(row["working size"]["total"] / row["full size"]["total"], 3)
        bits = np.diag(hamming(codes["working size"], codes["full size"]))
        row["code_bits_moved"] = {"median": float(np.median(bits)), "max": int(bits.max())}
        table.append(row)
        print(f"{side:5d} px: working size {row['working size']['total']:7.1f} ms, full size "
              f"{row['full size']['total']:7.1f} ms (ratio {row['ratio_total']}), code bits moved "
              f"median {row['code_bits_moved']['median']:g} max {row['code_bits_moved']['max']}")
    by_format = decode_by_format((1280, 4000), min(count, 8), rounds) if formats else None
    return {"benchmark": "big_photos", "date": utc_now(), "machine": machine_info(),
            "params": {"photos_per_size": count, "rounds": rounds, "sides": list(SIDES)},
            "method": __doc__.split("\n\n")[1].replace("\n", " "), "table": table,
            "decode_by_format": by_format}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.big_photos", description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=24, help="bundled samples per size")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--formats", action="store_true", help="also time decoding HEIC, AVIF and WebP beside JPEG")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    result = run(args.photos, args.rounds, args.formats)
    out = RESULTS_DIR / f"big_photos_{today()}{'_' + args.tag if args.tag else ''}.json"
    print(f"wrote {write_json(out, result)}")


if __name__ == "__main__":
    main()
