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

The pieces: ``encoders.train_config`` (the settings, one flag each), ``encoders.train_data`` (images
and the pair stream), ``encoders.train_losses``, ``encoders.train_loop``, ``encoders.train_checkpoint``
(save and resume), ``encoders.train_weights`` (BatchNorm re-estimation and export) and
``encoders.train_ray`` (Ray Train). This module is the entry point.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from encoders.train_config import TrainConfig
from encoders.train_loop import run_loop
from encoders.train_ray import train_ray


def train(cfg: TrainConfig) -> Path:
    """Train locally (CPU or one GPU) or on Ray Train when ``cfg.ray_workers > 0``."""
    if cfg.ray_workers > 0:
        return train_ray(cfg)
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    return run_loop(cfg, device)


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
    """CLI entry point: parse the flags, train, print the final weights path."""
    cfg = parse_args(argv)
    path = train(cfg)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
