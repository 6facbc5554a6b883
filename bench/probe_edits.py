"""Look for blind spots with edits that no suite draws: a fourth implementation, Pillow only.

    python -m bench.probe_edits --bench runs/bench-val/independent --backgrounds DIR --out-dir bench/results

Training edits (``encoders/augment.py``), the independent suite (albumentations and OpenCV) and
the augly suite all share their authors' idea of an edit. This probe draws other things users do
to photos, at other strengths, from the refs of an already built benchmark (validation sources):
turns on a grown canvas, crops to half of each side, small pastes, collages and 2x2 grids,
large captions, small grey re-encodes, thumbnails, colour negatives, prints with a white card,
a mirrored crop under a colour cast, story reposts on a blurred copy of the photo, a sepia
vignette filter, a tiled stock watermark, posterization, a double exposure, a phone photo
of a screen, and a print of another photo dropped onto it. It then scores them through
``neardup eval``'s own pipeline against the benchmark's refs (``rayapp.eval_cli``). A family
that scores low is a lead, to be checked on the real suites, not a target: its queries are few
and its edits arbitrary.
"""
from __future__ import annotations

import argparse
import csv
import io
import random
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from bench import common

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
Edit = Callable[[Image.Image, random.Random, list[Path]], Image.Image]


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _other(rng: random.Random, backgrounds: list[Path]) -> Image.Image:
    return Image.open(rng.choice(backgrounds)).convert("RGB")


def turn_on_canvas(im, rng, bgs):
    fill = rng.choice([(255, 255, 255), (0, 0, 0), (40, 40, 40)])
    return im.rotate(rng.uniform(10, 35) * rng.choice([-1, 1]), expand=True, fillcolor=fill, resample=Image.BICUBIC)


def crop_half(im, rng, bgs):
    w, h = im.size
    f = rng.uniform(0.45, 0.55)
    cw, ch = int(w * f), int(h * f)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return im.crop((x, y, x + cw, y + ch))


def paste_small(im, rng, bgs):
    out, s = _other(rng, bgs).resize((640, 480)), rng.uniform(0.3, 0.45)
    c = im.resize((int(640 * s), int(640 * s * im.height / im.width)))
    c = c.crop((0, 0, min(c.width, 600), min(c.height, 460)))
    out.paste(c, (rng.randint(0, 640 - c.width), rng.randint(0, 480 - c.height)))
    return out


def collage2(im, rng, bgs):
    h, o = 400, _other(rng, bgs)
    a, o = im.resize((int(im.width * h / im.height), h)), o.resize((int(o.width * h / o.height), h))
    first, second = (a, o) if rng.random() < 0.5 else (o, a)
    out = Image.new("RGB", (a.width + o.width + 8, h), (255, 255, 255))
    out.paste(first, (0, 0))
    out.paste(second, (first.width + 8, 0))
    return out


def grid4(im, rng, bgs):
    cells = [im] + [_other(rng, bgs) for _ in range(3)]
    rng.shuffle(cells)
    out = Image.new("RGB", (600, 600))
    for i, c in enumerate(cells):
        out.paste(ImageOps.fit(c, (300, 300)), ((i % 2) * 300, (i // 2) * 300))
    return out


def big_text(im, rng, bgs):
    im, (w, h) = im.copy(), im.size
    draw, font = ImageDraw.Draw(im), ImageFont.truetype(FONT, max(12, h // 7))
    for _ in range(3):
        words = rng.choice(["WOW", "SALE 50%", "me irl", "LOL!!"])
        draw.text((rng.randint(0, w // 4), rng.randint(0, h - h // 6)), words, font=font,
                  fill=tuple(rng.randint(0, 255) for _ in range(3)), stroke_width=2, stroke_fill=(0, 0, 0))
    return im


def grey_small_jpeg(im, rng, bgs):
    im = ImageEnhance.Contrast(ImageOps.grayscale(im).convert("RGB")).enhance(rng.uniform(1.3, 1.8))
    return _jpeg(im.resize((im.width // 2, im.height // 2)), rng.randint(6, 12))


def tiny_blur(im, rng, bgs):
    s = rng.uniform(48, 72) / max(im.size)
    return im.resize((max(8, int(im.width * s)), max(8, int(im.height * s)))).filter(ImageFilter.GaussianBlur(1))


def invert(im, rng, bgs):
    return ImageOps.invert(im)


def polaroid(im, rng, bgs):
    w, h = im.size
    p = int(0.06 * w)
    card = Image.new("RGB", (w + 2 * p, h + 4 * p), (250, 250, 245))
    card.paste(im, (p, p))
    return card.rotate(rng.uniform(-8, 8), expand=True, fillcolor=(90, 60, 40))


def flip_crop_tint(im, rng, bgs):
    im = ImageOps.mirror(crop_half(im, rng, bgs) if rng.random() < 0.5 else im)
    cast = Image.new("RGB", im.size, tuple(rng.randint(0, 255) for _ in range(3)))
    return Image.blend(im, cast, rng.uniform(0.3, 0.5))


def story(im, rng, bgs):
    """A story or reel repost: the photo whole, centred on a canvas of the other orientation
    (9:16 for a landscape photo, 16:9 for a portrait one) filled by its own enlarged, blurred copy."""
    w, h = im.size
    cw, ch = (720, 1280) if w >= h else (1280, 720)
    s = min(cw / w, ch / h) * rng.uniform(0.85, 1.0)
    cover = max(cw / w, ch / h)
    back = im.resize((int(w * cover) + 1, int(h * cover) + 1)).crop((0, 0, cw, ch))
    back = ImageEnhance.Brightness(back.filter(ImageFilter.GaussianBlur(rng.uniform(12, 30)))).enhance(0.8)
    photo = im.resize((int(w * s), int(h * s)))
    back.paste(photo, ((cw - photo.width) // 2, (ch - photo.height) // 2))
    return back


def sepia_vignette(im, rng, bgs):
    """A phone filter: warm sepia toning, raised contrast and a dark vignette."""
    grey = ImageOps.grayscale(im)
    toned = ImageOps.colorize(grey, (40, 26, 13), (255, 240, 205))
    toned = ImageEnhance.Contrast(toned).enhance(rng.uniform(1.1, 1.4))
    w, h = im.size
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse((-0.15 * w, -0.15 * h, 1.15 * w, 1.15 * h), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(0.15 * min(w, h)))
    return Image.composite(toned, Image.new("RGB", (w, h), (0, 0, 0)), mask)


def tiled_watermark(im, rng, bgs):
    """A stock photo's watermark: one word tiled across the whole photo, turned and half-transparent."""
    w, h = im.size
    size = max(12, int(min(w, h) * rng.uniform(0.08, 0.14)))
    layer = Image.new("RGBA", (2 * w, 2 * h), (0, 0, 0, 0))
    draw, font = ImageDraw.Draw(layer), ImageFont.truetype(FONT, size)
    word, alpha = rng.choice(["SAMPLE", "PREVIEW", "(c) stock"]), rng.randint(70, 130)
    for y in range(0, 2 * h, int(size * 2.5)):
        for x in range(-(y // 3) % (size * 6), 2 * w, size * 6):
            draw.text((x, y), word, font=font, fill=(255, 255, 255, alpha))
    layer = layer.rotate(rng.uniform(20, 40), resample=Image.BICUBIC).crop((w // 2, h // 2, w // 2 + w, h // 2 + h))
    return Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")


def posterize(im, rng, bgs):
    """A poster filter: two or three bits a channel, the colours flattened into bands."""
    return ImageOps.posterize(im, rng.choice([2, 3]))


def blend_other(im, rng, bgs):
    """A double exposure: another photo laid over the whole of it at 25-45% opacity."""
    return Image.blend(im, _other(rng, bgs).resize(im.size), rng.uniform(0.25, 0.45))


def recapture(im, rng, bgs):
    """A phone photo of the photo on a screen: a dark bezel, a keystone tilt, softer focus,
    a colour cast and sensor noise."""
    w, h = im.size
    p = int(0.08 * max(w, h))
    framed = ImageOps.expand(im, p, fill=(15, 15, 18))
    fw, fh = framed.size
    d = [rng.uniform(0, 0.08) * fw for _ in range(4)]
    quad = (d[0], 0, d[1], fh, fw - d[2], fh, fw - d[3], 0)  # corners the output's are read from
    out = framed.transform((fw, fh), Image.QUAD, quad, resample=Image.BICUBIC)
    out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.4)))
    out = Image.blend(out, Image.new("RGB", out.size, (90, 110, 160)), rng.uniform(0.08, 0.18))
    return Image.blend(out, Image.effect_noise(out.size, 40).convert("RGB"), 0.08)


def photo_over(im, rng, bgs):
    """A print dropped onto it: another photo in a white border, turned up to 12 degrees, over
    a quarter to nearly half of it."""
    w, h = im.size
    o = _other(rng, bgs)
    side = (rng.uniform(0.25, 0.45) * w * h / (o.width * o.height)) ** 0.5
    o = ImageOps.expand(o.resize((max(8, int(o.width * side)), max(8, int(o.height * side)))),
                        max(2, int(0.04 * o.width * side)), fill=(250, 250, 250))
    o = o.convert("RGBA").rotate(rng.uniform(-12, 12), expand=True, resample=Image.BICUBIC)
    o = o.crop((0, 0, min(o.width, w), min(o.height, h)))
    out = im.copy()
    out.paste(o, (rng.randint(0, w - o.width), rng.randint(0, h - o.height)), o)
    return out


# new families go last: each family draws its refs from one seeded stream, in this order
FAMILIES: dict[str, Edit] = {f.__name__: f for f in (
    turn_on_canvas, crop_half, paste_small, collage2, grid4, big_text, grey_small_jpeg, tiny_blur, invert,
    polaroid, flip_crop_tint, story, sepia_vignette, tiled_watermark, posterize, blend_other, recapture,
    photo_over)}


def build(bench: Path, backgrounds: list[Path], work: Path, per_family: int, seed: int) -> Path:
    """Draw ``per_family`` queries per family from ``bench``'s queried refs -> ground truth path."""
    rng = random.Random(seed)
    with open(bench / "ground_truth.csv", newline="") as f:
        refs = sorted({r["ref"] for r in csv.DictReader(f) if r["ref"]})
    (work / "queries").mkdir(parents=True, exist_ok=True)
    rows = []
    for family, edit in FAMILIES.items():
        for ref in rng.sample(refs, per_family):
            name = f"p{len(rows):05d}.jpg"
            _jpeg(edit(Image.open(bench / "refs" / ref).convert("RGB"), rng, backgrounds), 85).save(
                work / "queries" / name, quality=95)
            rows.append((name, ref, family))
    gt = work / "ground_truth.csv"
    with open(gt, "w", newline="") as f:
        csv.writer(f).writerows([("query", "ref", "family"), *rows])
    return gt


def run(argv: list[str] | None = None) -> Path:
    """Build the probe queries and score them -> the JSON ``rayapp.eval_cli`` wrote."""
    ap = argparse.ArgumentParser(prog="python -m bench.probe_edits", description=__doc__.splitlines()[0])
    ap.add_argument("--bench", required=True, help="a built eval benchmark (refs/, ground_truth.csv)")
    ap.add_argument("--backgrounds", required=True, help="folder of other photos (pastes, collages)")
    ap.add_argument("--work", default="runs/probe-edits")
    ap.add_argument("--per-family", type=int, default=25)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--encoders", nargs="+", default=["deephash:tta=flip_turns"])
    ap.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    args = ap.parse_args(argv)
    bgs = sorted(p for p in Path(args.backgrounds).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:200]
    work = Path(args.work)
    gt = build(Path(args.bench), bgs, work, args.per_family, args.seed)
    out = Path(args.out_dir) / f"probe_edits_{common.today()}.json"
    from rayapp.eval_cli import main as eval_main
    eval_main(["--refs", str(Path(args.bench) / "refs"), "--queries", str(work / "queries"),
               "--ground-truth", str(gt), "--encoders", *args.encoders, "--out", str(out)])
    return out


main = common.main_for(run)


if __name__ == "__main__":
    raise SystemExit(main())
