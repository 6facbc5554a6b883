"""``checkpoint.pt``: the state a training run saves as it goes and resumes from.

Keys: ``model``, ``ema``, ``opt``, ``clf`` (None without labels), ``step``, ``elapsed`` (seconds
trained) and ``config`` (the TrainConfig as a dict). A run whose output folder already holds a
checkpoint continues from it; otherwise it can start from a weights file (a fine-tune).
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from encoders.deephash import DeepHashNet
from encoders.train_config import TrainConfig


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dict on the CPU (not weights-only: it holds the optimizer state and config)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def save_checkpoint(path: Path, model: torch.nn.Module, ema: torch.optim.swa_utils.AveragedModel,
                    opt: torch.optim.Optimizer, clf: torch.nn.Module | None, step: int, elapsed: float,
                    cfg: TrainConfig) -> None:
    """Atomic checkpoint (write to a temp file, then rename), so a kill mid-save leaves the last one."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "clf": clf.state_dict() if clf else None, "step": step, "elapsed": elapsed,
                "config": asdict(cfg)}, tmp)
    os.replace(tmp, path)


def restore(path: Path, init: str | None, model: DeepHashNet, ema: torch.optim.swa_utils.AveragedModel,
            opt: torch.optim.Optimizer, clf: torch.nn.Module | None) -> tuple[int, float]:
    """Where a run starts -> (step, elapsed seconds): from the checkpoint at ``path`` when it
    exists (weights, EMA, optimizer and classifier restored), else from step 0, with the ``init``
    weights when given."""
    if path.exists():
        ck = load_checkpoint(path)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        if clf and ck.get("clf"):
            clf.load_state_dict(ck["clf"])
        print(f"resumed from {path} at step {ck['step']} ({ck['elapsed'] / 60:.1f} min)")
        return ck["step"], ck["elapsed"]
    if init:
        init_from(model, ema, init)
    return 0, 0.0


def init_from(model: DeepHashNet, ema: torch.nn.Module, weights: str) -> None:
    """Start a fine-tune from a weights file (same architecture; input normalisation may differ)."""
    from safetensors.torch import load_file
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(weights).items()}
    model.load_state_dict(state)
    ema.module.load_state_dict(state)
    print(f"initialised from {weights}")
