"""Training scaled out with Ray Train: a TorchTrainer runs ``encoders.train_loop.run_loop`` on
several workers (DDP through ``prepare_model``, optionally one GPU each), and every worker
reports its metrics to Ray; rank 0 writes the checkpoint and the weights.
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

import torch

from encoders.train_config import TrainConfig
from encoders.train_loop import run_loop
from encoders.train_weights import weights_path


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
    return weights_path(cfg)
