"""The settings of one deephash training run, as one dataclass.

Every field is a flag of ``python -m encoders.train`` (``encoders.train.parse_args`` builds them
from the field defaults), and the whole config is saved into the checkpoint and the weights
metadata, so a run resumes with what it started with and its weights say how they were made.
"""
from __future__ import annotations

from dataclasses import dataclass, field


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
