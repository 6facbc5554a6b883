"""The training loop shared by the local and the Ray Train paths.

One step: both views of a pair batch through the network (bf16 autocast on CUDA), the objective
of ``encoders.train_losses`` against the batch and a queue of past codes, AdamW with gradient
clipping, and an EMA copy of the weights. The learning rate warms up, then follows a cosine over
the run's progress (elapsed time against the budget, or steps against ``max_steps``). Rank 0 logs
to ``OUT/log.jsonl``, checkpoints every ``checkpoint_every`` steps and writes the final weights.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from encoders.deephash import DeepHashNet
from encoders.train_checkpoint import restore, save_checkpoint
from encoders.train_config import TrainConfig
from encoders.train_data import PairStream, list_images, load_labels, preload, to_input
from encoders.train_losses import total_loss
from encoders.train_weights import write_final_weights


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Linear warm-up then cosine decay over training progress in [0, 1]."""
    if progress < cfg.warmup_frac:
        return cfg.lr * max(progress / cfg.warmup_frac, 0.02)
    p = (progress - cfg.warmup_frac) / max(1e-9, 1 - cfg.warmup_frac)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def _progress(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """How far the run is, in [0, 1+): the larger of the time and the step budget spent."""
    parts = []
    if cfg.minutes > 0:
        parts.append(elapsed / (cfg.minutes * 60))
    if cfg.max_steps > 0:
        parts.append(step / cfg.max_steps)
    return max(parts) if parts else 0.0


def _build(cfg: TrainConfig, n_classes: int) -> tuple[DeepHashNet, torch.nn.Module | None]:
    """The network and, with labels, a linear classifier on its codes (seeded: same init per seed)."""
    torch.manual_seed(cfg.seed)
    model = DeepHashNet(cfg.backbone, cfg.bits, input_norm=cfg.input_norm)
    clf = torch.nn.Linear(cfg.bits, n_classes) if n_classes > 0 else None
    return model, clf


@dataclass
class _Run:
    """What every step touches: the model (``net`` is it, wrapped for DDP), EMA, optimizer."""

    cfg: TrainConfig
    device: torch.device
    model: DeepHashNet
    net: torch.nn.Module
    ema: torch.optim.swa_utils.AveragedModel
    opt: torch.optim.Optimizer
    clf: torch.nn.Module | None
    params: list[torch.nn.Parameter]


class _Step(NamedTuple):
    """One step's outcome: the updated queue, the loss and its parts, the two views' codes."""

    queue: torch.Tensor
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    t1: torch.Tensor
    t2: torch.Tensor


def _setup(cfg: TrainConfig, device: torch.device, labels: np.ndarray, ckpt_path: Path,
           wrap: Callable[[torch.nn.Module], torch.nn.Module] | None) -> tuple[_Run, int, float]:
    """Model, classifier, optimizer and EMA, resumed when ``ckpt_path`` exists, placed on ``device``
    -> (run, step, elapsed seconds)."""
    n_classes = int(labels.max()) + 1 if labels.max() >= 0 else 0
    model, clf = _build(cfg, n_classes)
    params = list(model.parameters()) + (list(clf.parameters()) if clf else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    step, elapsed = restore(ckpt_path, cfg.init, model, ema, opt, clf)
    model.to(device)
    ema.to(device)
    if clf:
        clf.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = wrap(model) if wrap else model
    return _Run(cfg, device, model, net, ema, opt, clf, params), step, elapsed


def _loader(stream: PairStream, cfg: TrainConfig, device: torch.device) -> DataLoader:
    """Batches of the pair stream, decoded and edited by ``cfg.workers`` background processes."""
    return DataLoader(stream, batch_size=cfg.batch_size, num_workers=cfg.workers,
                      persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers else None,
                      pin_memory=device.type == "cuda")


def _step(run: _Run, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, queue: torch.Tensor,
          step: int) -> _Step:
    """One optimisation step on a pair batch; the queue (used from ``queue_start``) gains its codes."""
    cfg, device = run.cfg, run.device
    x = to_input(torch.cat([a, b]), device, run.model)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        t = run.net(x).float()  # forward = tanh(logits); going through DDP's forward syncs gradients
    t1, t2 = t.chunk(2)
    z1, z2 = F.normalize(t1, dim=1), F.normalize(t2, dim=1)
    use_q = queue if step >= cfg.queue_start and cfg.queue_size else None
    loss, terms = total_loss(t, z1, z2, y, use_q, run.clf, cfg)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.params, 5.0)
    run.opt.step()
    run.ema.update_parameters(run.model)
    if cfg.queue_size:
        queue = torch.cat([z2.detach(), z1.detach(), queue])[: cfg.queue_size]
    return _Step(queue, loss, terms, t1, t2)


def _record(res: _Step, step: int, elapsed: float, run: _Run) -> dict:
    """The log line of a step: losses, learning rate, and the Hamming distances between the two
    views of a pair (``ham_pos``) and across pairs (``ham_neg``)."""
    with torch.no_grad():
        pos = (res.t1.sign() != res.t2.sign()).float().sum(1).mean().item()
        neg = (res.t1.sign()[:, None] != res.t2.sign()[None]).float().sum(-1).mean().item()
    terms = {k: v.item() for k, v in res.terms.items()}
    return {"step": step, "elapsed_min": round(elapsed / 60, 2), "lr": round(run.opt.param_groups[0]["lr"], 6),
            "loss": round(res.loss.item(), 4), "nce": round(terms["nce"], 4), "koleo": round(terms["koleo"], 4),
            "quant": round(terms["quant"], 4), "balance": round(terms["balance"], 5),
            "decor": round(terms["decor"], 5), "sup": round(terms["sup"], 4),
            "ham_pos": round(pos, 2), "ham_neg": round(neg, 2),
            "gem_p": round(run.model.gem.p.item(), 3)}


def _emit(rec: dict, bar, log: TextIO | None, report: Callable[[dict], None] | None) -> None:
    """Show a log record on the progress bar, append it to the log file, report it to Ray."""
    bar.set_postfix(loss=rec["loss"], nce=rec["nce"], hp=rec["ham_pos"], hn=rec["ham_neg"])
    if log:
        log.write(json.dumps(rec) + "\n")
        log.flush()
    if report:
        report(rec)


def _train(run: _Run, loader: DataLoader, step: int, elapsed: float, out: Path, rank: int,
           report: Callable[[dict], None] | None) -> tuple[int, float]:
    """Steps until the time or step budget is spent, logging and checkpointing on the way
    -> (steps done, the run's start time on the wall clock)."""
    cfg = run.cfg
    queue = torch.zeros(0, cfg.bits, device=run.device)
    log = open(out / "log.jsonl", "a") if rank == 0 else None
    from tqdm import tqdm
    bar = tqdm(initial=step, total=cfg.max_steps or None, disable=rank != 0, mininterval=5, dynamic_ncols=True)
    t_start = time.time() - elapsed
    for a, b, y in loader:
        elapsed = time.time() - t_start
        progress = _progress(cfg, step, elapsed)
        if progress >= 1.0:
            break
        for g in run.opt.param_groups:
            g["lr"] = lr_at(cfg, progress)
        res = _step(run, a, b, y, queue, step)
        queue = res.queue
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0:
            _emit(_record(res, step, elapsed, run), bar, log, report)
        if rank == 0 and step % cfg.checkpoint_every == 0:
            save_checkpoint(out / "checkpoint.pt", run.model, run.ema, run.opt, run.clf, step,
                            time.time() - t_start, cfg)
    bar.close()
    return step, t_start


def run_loop(cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1,
             wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
             report: Callable[[dict], None] | None = None) -> Path:
    """The training loop shared by the local and Ray Train paths; returns the final weights path
    (the output folder on ranks other than 0, which write nothing)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    files = list_images(cfg.data, cfg.max_images)
    images = preload(files, cfg.preload_max_side)
    labels = load_labels(cfg.labels, files)[: len(images)]
    run, step, elapsed = _setup(cfg, device, labels, out / "checkpoint.pt", wrap)
    stream = PairStream(images, labels, cfg, seed=cfg.seed * 1000 + rank * 7919 + step)
    loader = _loader(stream, cfg, device)
    step, t_start = _train(run, loader, step, elapsed, out, rank, report)
    if rank != 0:
        return out
    save_checkpoint(out / "checkpoint.pt", run.model, run.ema, run.opt, run.clf, step, time.time() - t_start, cfg)
    return write_final_weights(run.model, run.ema, loader, cfg, device, step, t_start, len(images))
