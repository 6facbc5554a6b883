"""The weights files a training run leaves: BatchNorm statistics re-estimated with the final
weights, then safetensors with the run's metadata, written at the end of the loop (the model and
its EMA copy) or later from a saved checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from encoders.deephash import DeepHashNet, save_weights
from encoders.train_checkpoint import load_checkpoint
from encoders.train_config import TrainConfig
from encoders.train_data import PairStream, input_batches, list_images, preload


def weights_path(cfg: TrainConfig, ema: bool = False) -> Path:
    """``OUT/deephash-<backbone>-<bits>[-ema].safetensors``: where a run's final weights go."""
    return Path(cfg.out) / f"deephash-{cfg.backbone}-{cfg.bits}{'-ema' if ema else ''}.safetensors"


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


def write_final_weights(model: DeepHashNet, ema: torch.optim.swa_utils.AveragedModel, loader: DataLoader,
                        cfg: TrainConfig, device: torch.device, step: int, t_start: float,
                        n_images: int) -> Path:
    """At the end of a run: BN stats of the model and its EMA re-estimated on ``loader``, then both
    written with the run's metadata -> the model's weights path."""
    it = iter(loader)
    recalibrate_bn(model, input_batches(it, device, cfg.bn_batches, model))
    recalibrate_bn(ema.module, input_batches(it, device, cfg.bn_batches, ema.module))
    extra = {"steps": step, "train_minutes": round((time.time() - t_start) / 60, 1), "images": n_images,
             "config": {k: v for k, v in asdict(cfg).items() if k != "data"},
             "data": [str(d) for d in cfg.data]}
    final = weights_path(cfg)
    save_weights(model.cpu().eval(), final, cfg.input_size, extra=extra)
    save_weights(ema.module.cpu().eval(), weights_path(cfg, ema=True),
                 cfg.input_size, extra={**extra, "ema": cfg.ema_decay})
    print(f"wrote {final} after {step} steps")
    return final


def _count_images(dirs: list[str]) -> int | None:
    """How many training images the folders hold now (None when they are gone or empty)."""
    try:
        return len(list_images(dirs))
    except (FileNotFoundError, ValueError):
        return None


def export_checkpoint(checkpoint: str | Path, out: str | Path, ema: bool = True,
                      data: list[str] | None = None, bn_batches: int = 16, seed: int = 0) -> Path:
    """Write weights (safetensors) from a training checkpoint; with ``data``, re-estimate BN stats first."""
    ck = load_checkpoint(checkpoint)
    cfg = TrainConfig(**{"input_norm": "imagenet", **ck["config"]})  # older runs predate the field
    model = DeepHashNet(cfg.backbone, cfg.bits, input_norm=cfg.input_norm)
    if ema:
        state = {k.removeprefix("module."): v for k, v in ck["ema"].items() if k.startswith("module.")}
    else:
        state = ck["model"]
    model.load_state_dict(state)
    if data:
        _recalibrate_on(model, cfg, data, bn_batches, seed)
    extra = {"steps": ck["step"], "train_minutes": round(ck["elapsed"] / 60, 1), "ema": ema,
             "bn_recalibrated": bool(data), "images": _count_images(ck["config"]["data"]),
             "config": {k: v for k, v in ck["config"].items() if k != "data"}, "data": ck["config"]["data"]}
    return save_weights(model.eval(), out, cfg.input_size, extra=extra)


def _recalibrate_on(model: DeepHashNet, cfg: TrainConfig, data: list[str], n: int, seed: int) -> None:
    """BN stats of ``model`` re-estimated on ``n`` pair batches drawn from the ``data`` folders (CPU)."""
    images = preload(list_images(data), cfg.preload_max_side)
    stream = iter(DataLoader(PairStream(images, np.full(len(images), -1), cfg, seed), batch_size=cfg.batch_size))
    recalibrate_bn(model, input_batches(stream, torch.device("cpu"), n, model))
