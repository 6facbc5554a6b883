"""Train the deephash model on folders of images (self-supervised copy detection + hash terms).

Two views per image: a reference-like view (original or lightly edited) and a hard near-duplicate
edit from ``encoders.augment`` at widened ranges (+ sometimes a patch of another image pasted in).
Loss = InfoNCE over the batch and a queue of past codes (many negatives)
     + KoLeo (differential entropy: spreads codes apart)
     + optional supervised cross-entropy when labels are given
     + quantisation (|tanh| -> 1) + bit balance (each bit ~50% on) + bit decorrelation.

CPU:  python -m encoders.train --data DIR [--data DIR2] --out runs/x --minutes 90
GPU:  python -m encoders.train --data DIR --out runs/x --ray-workers 4 --use-gpu   (Ray Train, AMP, channels_last)
Resumes from ``OUT/checkpoint.pt`` when present; logs to ``OUT/log.jsonl``; final weights to
``OUT/deephash-<backbone>-<bits>.safetensors`` (plus an EMA copy).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from encoders.augment import hue_shift, random_crop, random_edit
from encoders.decode import resize_square
from encoders.deephash import DeepHashNet, save_weights

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class TrainConfig:
    """Everything a run needs; saved into the checkpoint and the weights metadata."""

    data: list[str] = field(default_factory=list)
    out: str = "runs/deephash"
    backbone: str = "mobilenet_v3_small"
    bits: int = 128
    input_size: int = 128
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.03
    minutes: float = 90.0  # time budget; the LR schedule follows elapsed/budget
    max_steps: int = 0  # 0 = time budget only
    temperature: float = 0.1
    queue_size: int = 2048
    queue_start: int = 300  # steps before the queue is used (early codes move fast)
    w_koleo: float = 1.0
    w_quant: float = 0.1
    w_balance: float = 0.1
    w_decor: float = 0.1
    w_supervised: float = 0.2
    labels: str | None = None  # CSV file,label (file relative to a data dir or a basename)
    strength_min: float = 1.0
    strength_max: float = 2.0
    p_identity_ref: float = 0.4
    p_paste: float = 0.2  # another photo pasted over part of the copy
    p_embed: float = 0.15  # the copy pasted, shrunk, onto another photo
    p_crop: float = 0.6  # extra random crop before the edit families
    p_dihedral: float = 0.15  # a random flip / quarter turn / 180 degrees of the edited view
    p_color: float = 0.8  # colour jitter (brightness, contrast, saturation, gamma) on the edited view
    p_color_ref: float = 0.3  # colour jitter on the reference view
    p_gray: float = 0.15
    max_chain: int = 4  # edit families composed on the hard view: 1..max_chain
    input_norm: str = "instance"  # encoders.deephash.INPUT_NORMS
    init: str | None = None  # start from these weights (safetensors) when there is no checkpoint
    preload_max_side: int = 224
    max_images: int = 0
    ema_decay: float = 0.998
    bn_batches: int = 16  # batches used to re-estimate BatchNorm statistics at the end
    workers: int = 1
    threads: int = 2
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    ray_workers: int = 0
    use_gpu: bool = False


# ---------------------------------------------------------------- data
def list_images(dirs: list[str], max_images: int = 0) -> list[Path]:
    """Sorted image files under the given folders (recursive)."""
    files: list[Path] = []
    for d in dirs:
        p = Path(d)
        if not p.exists():
            raise FileNotFoundError(f"training data folder not found: {d}")
        files += sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ValueError(f"no images found in {dirs}")
    return files[:max_images] if max_images else files


def preload(files: list[Path], max_side: int) -> list[np.ndarray]:
    """Decode every image once, shrink to ``max_side`` (aspect kept), keep uint8 arrays in RAM."""
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.draft("RGB", (max_side, max_side))
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side), Image.BILINEAR)
                out.append(np.asarray(im))
        except Exception as exc:  # unreadable files are skipped, not fatal
            print(f"skip {f}: {exc}")
    return out


def load_labels(path: str | None, files: list[Path]) -> np.ndarray:
    """Integer class per file from a CSV (file,label); -1 where unlabelled."""
    labels = np.full(len(files), -1, dtype=np.int64)
    if not path:
        return labels
    with open(path, newline="") as fh:
        table = {row[0]: row[1] for row in csv.reader(fh) if len(row) >= 2}
    classes = {c: i for i, c in enumerate(sorted(set(table.values())))}
    for i, f in enumerate(files):
        key = next((k for k in (str(f), f.name) if k in table), None)
        if key is not None:
            labels[i] = classes[table[key]]
    return labels


def _paste_other(img: Image.Image, other: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Cut-mix style distractor: paste a patch of another image over 9-45% of this one."""
    w, h = img.size
    o = Image.fromarray(other)
    frac = rng.uniform(0.3, 0.67)
    pw, ph = max(8, int(w * frac)), max(8, int(h * frac))
    patch = o.resize((pw, ph), Image.BILINEAR)
    img = img.copy()
    img.paste(patch, (int(rng.integers(0, max(1, w - pw))), int(rng.integers(0, max(1, h - ph)))))
    return img


def _embed_in_other(img: Image.Image, other: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The copy as part of a bigger picture: shrunk to 40-85% of another photo's side, pasted at
    a random place on it (the other photo is the background, not the copy)."""
    bg = Image.fromarray(other)
    bw, bh = bg.size
    bg = bg.resize((max(16, int(bw * 1.5)), max(16, int(bh * 1.5))), Image.BILINEAR)
    bw, bh = bg.size
    s = rng.uniform(0.4, 0.85)
    w, h = img.size
    f = s * min(bw / w, bh / h)
    pw, ph = max(8, int(w * f)), max(8, int(h * f))
    bg.paste(img.resize((pw, ph), Image.BILINEAR),
             (int(rng.integers(0, max(1, bw - pw + 1))), int(rng.integers(0, max(1, bh - ph + 1)))))
    return bg


_DIHEDRAL = (Image.FLIP_LEFT_RIGHT, Image.FLIP_TOP_BOTTOM, Image.ROTATE_90, Image.ROTATE_180,
             Image.ROTATE_270, Image.TRANSPOSE, Image.TRANSVERSE)


def _photometric(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """SimCLR-style colour jitter: without it the network shortcuts on colour statistics."""
    from PIL import ImageEnhance
    ops = [lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(0.4, 1.8)),
           lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(0.3, 1.8)),
           lambda im: ImageEnhance.Color(im).enhance(rng.uniform(0.0, 2.5)),
           lambda im: _gamma(im, math.exp(rng.uniform(math.log(0.4), math.log(2.5))))]
    for i in rng.permutation(len(ops)):
        if i < 3 or rng.random() < 0.5:
            img = ops[i](img)
    if rng.random() < 0.3:
        img = hue_shift(img, rng, strength=0.0)  # strength < 1 keeps the evaluation range
    return img


def _gamma(img: Image.Image, g: float) -> Image.Image:
    lut = [min(255, int(round(255 * (i / 255) ** g))) for i in range(256)]
    return img.point(lut * 3)


def _resized_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Random crop of 20-100% of the area (aspect 3:4..4:3), the contrastive-learning staple."""
    return random_crop(img, rng, strength=1.0) if rng.random() < 0.5 else \
        random_crop(img, rng, strength=2.0)


class PairStream(IterableDataset):
    """Endless stream of (ref_view, edited_view, label) uint8 pairs, reshuffled each epoch."""

    def __init__(self, images: list[np.ndarray], labels: np.ndarray, cfg: TrainConfig, seed: int):
        self.images, self.labels, self.cfg, self.seed = images, labels, cfg, seed

    def _other(self, rng: np.random.Generator) -> np.ndarray:
        return self.images[int(rng.integers(0, len(self.images)))]

    def _views(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cfg, img = self.cfg, Image.fromarray(self.images[i])
        ref = img
        if rng.random() > cfg.p_identity_ref:
            ref, _ = random_edit(img, rng, strength=1.0, n_min=1, n_max=1)
        if rng.random() < cfg.p_color_ref:
            ref = _photometric(ref, rng)
        edit = img
        if rng.random() < cfg.p_crop:
            edit = _resized_crop(edit, rng)
        if rng.random() < cfg.p_dihedral:
            edit = edit.transpose(_DIHEDRAL[int(rng.integers(0, len(_DIHEDRAL)))])
        if rng.random() < cfg.p_paste:
            edit = _paste_other(edit, self._other(rng), rng)
        edit, _ = random_edit(edit, rng, strength=rng.uniform(cfg.strength_min, cfg.strength_max),
                              n_max=cfg.max_chain)
        if rng.random() < cfg.p_embed:
            edit = _embed_in_other(edit, self._other(rng), rng)
        if rng.random() < cfg.p_color:
            edit = _photometric(edit, rng)
        if rng.random() < cfg.p_gray:
            edit = edit.convert("L").convert("RGB")
        return resize_square(ref, cfg.input_size), resize_square(edit, cfg.input_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        rng = np.random.default_rng([self.seed, wid, int(time.time() * 1000) % 1_000_000])
        while True:
            for i in rng.permutation(len(self.images)):
                a, b = self._views(int(i), rng)
                yield a, b, int(self.labels[i])


def _to_input(x: torch.Tensor, device: torch.device, model: DeepHashNet) -> torch.Tensor:
    """uint8 pixel batch -> the network's normalised input, on ``device``."""
    x = model.prepare(x.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x.contiguous()


# ---------------------------------------------------------------- losses
def info_nce(z1: torch.Tensor, z2: torch.Tensor, queue: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE: each view's positive is its partner; other views (+ queue) are negatives."""
    z = torch.cat([z1, z2])
    n = z1.shape[0]
    sim = z @ z.T / tau
    sim.fill_diagonal_(float("-inf"))
    if queue is not None and len(queue):
        sim = torch.cat([sim, z @ queue.T / tau], dim=1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def koleo(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko differential-entropy estimator (negated): pushes nearest neighbours apart."""
    with torch.no_grad():
        d = z @ z.T
        d.fill_diagonal_(-2)
        nn_idx = d.argmax(dim=1)
    dist = (z - z[nn_idx]).norm(dim=1)
    return -torch.log(dist + eps).mean()


def hash_terms(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(quantisation, bit balance, decorrelation) on relaxed codes t in (-1, 1)."""
    quant = (t.abs() - 1).pow(2).mean()
    balance = t.mean(0).pow(2).mean()
    c = t - t.mean(0)
    cov = c.T @ c / max(1, t.shape[0] - 1)
    std = cov.diagonal().clamp(min=1e-6).sqrt()
    corr = cov / (std[:, None] * std[None, :])
    off = corr - torch.diag(corr.diagonal())
    decor = off.pow(2).sum() / (t.shape[1] * (t.shape[1] - 1))
    return quant, balance, decor


# ---------------------------------------------------------------- loop
def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Linear warm-up then cosine decay over training progress in [0, 1]."""
    if progress < cfg.warmup_frac:
        return cfg.lr * max(progress / cfg.warmup_frac, 0.02)
    p = (progress - cfg.warmup_frac) / max(1e-9, 1 - cfg.warmup_frac)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def _progress(cfg: TrainConfig, step: int, elapsed: float) -> float:
    parts = []
    if cfg.minutes > 0:
        parts.append(elapsed / (cfg.minutes * 60))
    if cfg.max_steps > 0:
        parts.append(step / cfg.max_steps)
    return max(parts) if parts else 0.0


def _build(cfg: TrainConfig, n_classes: int) -> tuple[DeepHashNet, torch.nn.Module | None]:
    torch.manual_seed(cfg.seed)
    model = DeepHashNet(cfg.backbone, cfg.bits, input_norm=cfg.input_norm)
    clf = torch.nn.Linear(cfg.bits, n_classes) if n_classes > 0 else None
    return model, clf


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, batches: Iterator[torch.Tensor]) -> torch.nn.Module:
    """Re-estimate BatchNorm running stats with the final weights (exact average over ``batches``).

    torchvision's MobileNetV3 uses BN momentum 0.01, so running stats lag a from-scratch model that
    moves fast; without this, eval-mode codes can collapse to one value.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for x in batches:
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()


def _bn_batches(loader_iter: Iterator, device: torch.device, n: int,
                model: DeepHashNet) -> Iterator[torch.Tensor]:
    for _ in range(n):
        a, b, _y = next(loader_iter)
        yield _to_input(torch.cat([a, b]), device, model)


def run_loop(cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1,
             wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
             report: Callable[[dict], None] | None = None) -> Path:
    """The training loop shared by the local and Ray Train paths; returns the final weights path."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    files = list_images(cfg.data, cfg.max_images)
    images = preload(files, cfg.preload_max_side)
    labels = load_labels(cfg.labels, files)[: len(images)]
    n_classes = int(labels.max()) + 1 if labels.max() >= 0 else 0
    model, clf = _build(cfg, n_classes)
    params = list(model.parameters()) + (list(clf.parameters()) if clf else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    step, elapsed = 0, 0.0
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        if clf and ck.get("clf"):
            clf.load_state_dict(ck["clf"])
        step, elapsed = ck["step"], ck["elapsed"]
        print(f"resumed from {ckpt_path} at step {step} ({elapsed / 60:.1f} min)")
    elif cfg.init:
        _init_from(model, ema, cfg.init)
    model.to(device)
    ema.to(device)
    if clf:
        clf.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = wrap(model) if wrap else model
    stream = PairStream(images, labels, cfg, seed=cfg.seed * 1000 + rank * 7919 + step)
    loader = DataLoader(stream, batch_size=cfg.batch_size, num_workers=cfg.workers,
                        persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers else None,
                        pin_memory=device.type == "cuda")
    queue = torch.zeros(0, cfg.bits, device=device)
    log = open(out / "log.jsonl", "a") if rank == 0 else None
    from tqdm import tqdm
    bar = tqdm(initial=step, total=cfg.max_steps or None, disable=rank != 0, mininterval=5, dynamic_ncols=True)
    t_start = time.time() - elapsed
    amp = device.type == "cuda"
    for a, b, y in loader:
        elapsed = time.time() - t_start
        progress = _progress(cfg, step, elapsed)
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, progress)
        x = _to_input(torch.cat([a, b]), device, model)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            t = net(x).float()  # forward = tanh(logits); going through DDP's forward syncs gradients
        t1, t2 = t.chunk(2)
        z1, z2 = F.normalize(t1, dim=1), F.normalize(t2, dim=1)
        use_q = queue if step >= cfg.queue_start and cfg.queue_size else None
        l_nce = info_nce(z1, z2, use_q, cfg.temperature)
        l_ko = koleo(torch.cat([z1, z2]))
        quant, balance, decor = hash_terms(t)
        loss = l_nce + cfg.w_koleo * l_ko + cfg.w_quant * quant + cfg.w_balance * balance + cfg.w_decor * decor
        l_sup = torch.zeros((), device=device)
        yy = torch.cat([y, y]).to(device)
        if clf is not None and (yy >= 0).any():
            l_sup = F.cross_entropy(clf(t[yy >= 0]), yy[yy >= 0])
            loss = loss + cfg.w_supervised * l_sup
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        ema.update_parameters(model)
        if cfg.queue_size:
            queue = torch.cat([z2.detach(), z1.detach(), queue])[: cfg.queue_size]
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0:
            with torch.no_grad():
                pos = (t1.sign() != t2.sign()).float().sum(1).mean().item()
                neg = (t1.sign()[:, None] != t2.sign()[None]).float().sum(-1).mean().item()
            rec = {"step": step, "elapsed_min": round(elapsed / 60, 2), "lr": round(opt.param_groups[0]["lr"], 6),
                   "loss": round(loss.item(), 4), "nce": round(l_nce.item(), 4), "koleo": round(l_ko.item(), 4),
                   "quant": round(quant.item(), 4), "balance": round(balance.item(), 5),
                   "decor": round(decor.item(), 5), "sup": round(l_sup.item(), 4),
                   "ham_pos": round(pos, 2), "ham_neg": round(neg, 2),
                   "gem_p": round(model.gem.p.item(), 3)}
            bar.set_postfix(loss=rec["loss"], nce=rec["nce"], hp=rec["ham_pos"], hn=rec["ham_neg"])
            if log:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if report:
                report(rec)
        if rank == 0 and step % cfg.checkpoint_every == 0:
            _checkpoint(ckpt_path, model, ema, opt, clf, step, time.time() - t_start, cfg)
    bar.close()
    if rank != 0:
        return out
    _checkpoint(ckpt_path, model, ema, opt, clf, step, time.time() - t_start, cfg)
    it = iter(loader)
    recalibrate_bn(model, _bn_batches(it, device, cfg.bn_batches, model))
    recalibrate_bn(ema.module, _bn_batches(it, device, cfg.bn_batches, ema.module))
    extra = {"steps": step, "train_minutes": round((time.time() - t_start) / 60, 1), "images": len(images),
             "config": {k: v for k, v in asdict(cfg).items() if k != "data"},
             "data": [str(d) for d in cfg.data]}
    final = out / f"deephash-{cfg.backbone}-{cfg.bits}.safetensors"
    save_weights(model.cpu().eval(), final, cfg.input_size, extra=extra)
    save_weights(ema.module.cpu().eval(), out / f"deephash-{cfg.backbone}-{cfg.bits}-ema.safetensors",
                 cfg.input_size, extra={**extra, "ema": cfg.ema_decay})
    print(f"wrote {final} after {step} steps")
    return final


def _init_from(model: DeepHashNet, ema: torch.nn.Module, weights: str) -> None:
    """Start a fine-tune from a weights file (same architecture; input normalisation may differ)."""
    from safetensors.torch import load_file
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(weights).items()}
    model.load_state_dict(state)
    ema.module.load_state_dict(state)
    print(f"initialised from {weights}")


def _checkpoint(path: Path, model, ema, opt, clf, step: int, elapsed: float, cfg: TrainConfig) -> None:
    """Atomic checkpoint (write to a temp file, then rename)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "clf": clf.state_dict() if clf else None, "step": step, "elapsed": elapsed,
                "config": asdict(cfg)}, tmp)
    os.replace(tmp, path)


def _count_images(dirs: list[str]) -> int | None:
    try:
        return len(list_images(dirs))
    except (FileNotFoundError, ValueError):
        return None


def export_checkpoint(checkpoint: str | Path, out: str | Path, ema: bool = True,
                      data: list[str] | None = None, bn_batches: int = 16, seed: int = 0) -> Path:
    """Write weights (safetensors) from a training checkpoint; with ``data``, re-estimate BN stats first."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**{"input_norm": "imagenet", **ck["config"]})  # older runs predate the field
    model = DeepHashNet(cfg.backbone, cfg.bits, input_norm=cfg.input_norm)
    if ema:
        state = {k.removeprefix("module."): v for k, v in ck["ema"].items() if k.startswith("module.")}
    else:
        state = ck["model"]
    model.load_state_dict(state)
    if data:
        files = list_images(data)
        images = preload(files, cfg.preload_max_side)
        stream = iter(DataLoader(PairStream(images, np.full(len(images), -1), cfg, seed), batch_size=cfg.batch_size))
        recalibrate_bn(model, _bn_batches(stream, torch.device("cpu"), bn_batches, model))
    extra = {"steps": ck["step"], "train_minutes": round(ck["elapsed"] / 60, 1), "ema": ema,
             "bn_recalibrated": bool(data), "images": _count_images(ck["config"]["data"]),
             "config": {k: v for k, v in ck["config"].items() if k != "data"}, "data": ck["config"]["data"]}
    return save_weights(model.eval(), out, cfg.input_size, extra=extra)


# ---------------------------------------------------------------- entry points
def train(cfg: TrainConfig) -> Path:
    """Train locally (CPU or one GPU) or on Ray Train when ``cfg.ray_workers > 0``."""
    if cfg.ray_workers > 0:
        return train_ray(cfg)
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    return run_loop(cfg, device)


def _ray_worker(config: dict) -> None:
    """Ray Train per-worker loop: DDP via prepare_model, metrics via ray.train.report."""
    import ray.train
    import ray.train.torch as rtt
    cfg = TrainConfig(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg.batch_size = max(8, cfg.batch_size // world) if not cfg.use_gpu else cfg.batch_size
    if not cfg.use_gpu:
        torch.set_num_threads(cfg.threads)
    run_loop(cfg, rtt.get_device(), rank=rank, world=world, wrap=rtt.prepare_model,
             report=ray.train.report)  # every rank reports (Ray Train expects all workers to)


def train_ray(cfg: TrainConfig) -> Path:
    """Scale out with Ray Train's TorchTrainer (several workers, optionally one GPU each)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    cfg = copy.deepcopy(cfg)
    cfg.out = str(Path(cfg.out).resolve())
    cfg.data = [str(Path(d).resolve()) for d in cfg.data]
    trainer = TorchTrainer(
        _ray_worker, train_loop_config=asdict(cfg),
        scaling_config=ScalingConfig(num_workers=cfg.ray_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(name=Path(cfg.out).name, storage_path=str(Path(cfg.out).parent / "ray_results")),
    )
    trainer.fit()
    return Path(cfg.out) / f"deephash-{cfg.backbone}-{cfg.bits}.safetensors"


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """CLI flags -> TrainConfig (every field is a flag; --data repeats)."""
    ap = argparse.ArgumentParser(prog="python -m encoders.train", description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if name == "data":
            ap.add_argument(flag, action="append", required=True, help="image folder (repeatable)")
        elif isinstance(value, bool):
            ap.add_argument(flag, action="store_true", default=value)
        else:
            kind = type(value) if value is not None else str
            ap.add_argument(flag, type=kind, default=value)
    return TrainConfig(**vars(ap.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    path = train(cfg)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
