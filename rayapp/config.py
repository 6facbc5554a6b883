"""Configuration as dataclasses, loaded from YAML, then environment, then flags.

Precedence (last wins): defaults < YAML file < NEARDUP_* environment < explicit overrides.
Environment keys are ``NEARDUP_<SECTION>_<FIELD>``, e.g. ``NEARDUP_SERVE_PORT=9000``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from encoders.registry import DEFAULT_ENCODER
from shards.verify import VERIFY_DEPTH
from encoders.tta import (CONTENT_COST, DEFAULT_REF_VIEWS, FLIP_COST, HALF_TURN_COST, OUTSIDE_COST,
                          REF_VIEW_COST, ROT_COST, UPRIGHT_COST,
                          check_ref_views, costs)


@dataclass
class EncoderConfig:
    name: str = DEFAULT_ENCODER      # registry name: deephash, pdq, phash, ...
    weights: str | None = None       # local weights file; None = bundled default
    batch_size: int = 64
    device: str = "auto"             # auto | cpu | cuda
    num_replicas: int = 1            # encoder actors (ingest) / replicas (serve)
    max_pixels: int = 50_000_000     # decompression-bomb cap
    tta: str = "flip_turns"          # query-time variants searched too: none|flip|flip_rot90|flip_turns|d4
    flip_cost: float = FLIP_COST     # prior cost a mirrored match pays (encoders.tta.costs)
    rot_cost: float = ROT_COST       # prior cost a quarter-turned match pays
    half_turn_cost: float = HALF_TURN_COST  # prior cost an upside-down (rot180, vertical mirror) match pays
    content: bool = True             # also search the photo inside a flat frame (encoders.frame)
    content_cost: float = CONTENT_COST  # prior cost a match of that crop pays
    outside_cost: float = OUTSIDE_COST  # prior cost a match of the part outside a pasted photo pays
    upright_cost: float = UPRIGHT_COST  # prior cost a match of the query turned back upright pays
    rank: str = "vector"             # vector (cosine of side vectors) | weighted (bit confidences) | hamming
    # crops stored with each indexed image (encoders.tta.REF_VIEWS; [] = one code per image)
    ref_views: list = field(default_factory=lambda: list(DEFAULT_REF_VIEWS))
    ref_view_cost: float = REF_VIEW_COST  # prior cost a match of a stored crop pays
    verify: int = VERIFY_DEPTH       # spatially verify an image query's top N hits (shards.verify; 0 = off)

    def __post_init__(self) -> None:
        self.ref_views = list(check_ref_views(self.ref_views))

    def view_costs(self, names: Sequence[str]) -> np.ndarray:
        """The prior cost of each named query view under these settings (``encoders.tta.costs``)."""
        return costs(names, self.flip_cost, self.rot_cost, self.content_cost, self.half_turn_cost,
                     self.outside_cost, self.upright_cost)


@dataclass
class ShardConfig:
    index_dir: str = "var/index"     # each shard keeps its files in index_dir/shard-<i>
    num_shards: int = 1
    index_kind: str | None = None    # None = shards.index default kind
    bits: int = 0                    # 0 = take the encoder's bits
    index_params: dict = field(default_factory=dict)
    snapshot_every: int = 100_000    # WAL records between snapshots
    vectors: bool = True             # a new index stores the encoder's int8 side vectors (re-rank)
    keypoints: bool = True           # a new index stores each image's ORB keypoints (verification)
    placement: str = "auto"          # auto | resource (one per node with {"shard": 1}) | local
    namespace: str = "neardup"


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None         # bearer token for writes; None = writes open (demo only)
    read_token: str | None = None    # bearer token for reads (search, hash, status, get); None = open
    body_timeout_s: float = 10.0     # a request body still arriving after this gets a 408
    max_body_bytes: int = 20 * 1024 * 1024
    max_batch_items: int = 64
    rate_limit_per_s: float = 200.0  # per client IP, token bucket
    shard_timeout_s: float = 2.0
    default_k: int = 10
    max_k: int = 1000
    max_radius: int = 64


@dataclass
class Config:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "Config":
        cfg = cls()
        _merge(cfg, data or {})
        return cfg


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None,
                env: dict | None = None) -> Config:
    """Build a Config from an optional YAML file, NEARDUP_* env vars and overrides.

    ``overrides`` is nested like the YAML (``{"serve": {"port": 9000}}``); None values are ignored.
    """
    cfg = Config()
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        _merge(cfg, yaml.safe_load(p.read_text()) or {})
    _merge(cfg, _from_env(os.environ if env is None else env))
    _merge(cfg, overrides or {})
    return cfg


def _merge(cfg: Any, data: dict) -> None:
    names = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"unknown config key {key!r} in {type(cfg).__name__}; "
                             f"known: {', '.join(sorted(names))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config section {key!r} must be a mapping")
            _merge(current, value)
        elif value is not None:
            setattr(cfg, key, _coerce(value, current, names[key]))
    if hasattr(cfg, "__post_init__"):
        cfg.__post_init__()  # re-check what the merge set


def _coerce(value: Any, current: Any, f: dataclasses.Field) -> Any:
    if isinstance(value, str):
        if isinstance(current, bool):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, dict):
            return yaml.safe_load(value) or {}
        if isinstance(current, list):  # NEARDUP_ENCODER_REF_VIEWS=center70,top_left70
            return [v.strip() for v in value.split(",") if v.strip()]
        if current is None and value.lower() in ("", "none", "null"):
            return None
    return value


def _from_env(environ: dict) -> dict:
    out: dict = {}
    sections = {f.name for f in dataclasses.fields(Config)}
    for key, value in environ.items():
        if not key.startswith("NEARDUP_"):
            continue
        parts = key[len("NEARDUP_"):].lower().split("_", 1)
        if len(parts) == 2 and parts[0] in sections:
            out.setdefault(parts[0], {})[parts[1]] = value
    return out
