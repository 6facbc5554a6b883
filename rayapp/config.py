"""Configuration in three parts, plus the HTTP service's, validated in one place.

- ``encoder``: what the encoder is and how it runs (model, weights, device, batching);
- ``query``: how a query is searched (its views and their prior costs, ranking, the cost of a
  stored crop's match, spatial verification);
- ``storage``: what is stored and where (index folder, shards, index kind, side vectors,
  keypoints, the crops stored with each image);
- ``serve``: the HTTP service (address, tokens, limits).

Precedence (last wins): defaults < YAML file < NEARDUP_* environment < explicit overrides.
Environment keys are ``NEARDUP_<PART>_<FIELD>``, e.g. ``NEARDUP_SERVE_PORT=9000``.
:meth:`Config.validate` checks every value against the rule written beside its field and
names each bad one; :meth:`Config.to_yaml` writes only what differs from the defaults.
Files in the older layout (a ``shards:`` section; query and stored-view keys under
``encoder:``) still load: :func:`upgrade` moves their keys into the parts.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from encoders.base import RANK_MODES, RUNTIMES
from encoders.registry import DEFAULT_ENCODER
from encoders.tta import (CONTENT_COST, DEFAULT_REF_VIEWS, FLIP_COST, HALF_TURN_COST, OUTSIDE_COST,
                          NEGATIVE_COST, REF_VIEW_COST, REF_VIEWS, ROT_COST, TILT_COST, TTA_MODES, UPRIGHT_COST, costs)
from shards.index import INDEX_KINDS
from shards.verify import VERIFY_DEPTH, VERIFY_MORE

Rule = tuple[Callable[[Any], bool], str]


def _one_of(*options: Any) -> dict:
    return {"rule": (lambda v: v in options, "one of " + ", ".join(map(str, options)))}


def _at_least(low: float) -> dict:
    return {"rule": (lambda v: v >= low, f">= {low}")}


def _within(low: int, high: int) -> dict:
    return {"rule": (lambda v: low <= v <= high, f"between {low} and {high}")}


def _rule(check: Callable[[Any], bool], says: str) -> dict:
    return {"rule": (check, says)}


def _value(default: Any, meta: dict | None = None) -> Any:
    """A field with ``default`` (copied when mutable) and its rule (``meta``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta or {})
    return field(default=default, metadata=meta or {})


_COST = _at_least(0.0)


@dataclass
class EncoderConfig:
    """What the encoder is and how it runs: the same for ingest, Serve, search and dedup."""
    name: str = _value(DEFAULT_ENCODER, _rule(bool, "an encoder name"))  # deephash, pdq, phash, ...
    weights: str | None = None       # local weights file; None = bundled default
    calibration: str | None = None   # confidence curves file (neardup eval --calibrate); None = bundled
    batch_size: int = _value(64, _at_least(1))  # images per forward pass (ingest, and serve: all views)
    device: str = _value("auto", _rule(lambda v: v in ("auto", "cpu") or v.startswith("cuda"),
                                       "auto, cpu or cuda[:N]"))
    num_replicas: int = _value(1, _at_least(1))  # encoder actors (ingest) / replicas (serve)
    runtime: str = _value("auto", _one_of(*RUNTIMES))  # deephash: torch | onnx | auto (onnx on CPU)
    # serve: encode inside the Ingress replica or in a deployment of its own (auto: own if GPU)
    placement: str = _value("auto", _one_of("auto", "ingress", "replica"))
    max_pixels: int = _value(50_000_000, _at_least(1))  # decompression-bomb cap


@dataclass
class QueryConfig:
    """How a query is searched: the views of it searched, their prior costs, how hits rank, and
    how many are verified (``rayapp.searcher``)."""
    tta: str = _value("flip_turns", _one_of(*TTA_MODES))  # variants searched too: none|flip|...|d4
    flip_cost: float = _value(FLIP_COST, _COST)            # prior cost a mirrored match pays
    rot_cost: float = _value(ROT_COST, _COST)              # ... a quarter-turned match
    half_turn_cost: float = _value(HALF_TURN_COST, _COST)  # ... an upside-down (rot180, vflip) match
    content: bool | str = _value(True, _one_of(True, False, "frame"))  # search a framed photo's crop
    content_cost: float = _value(CONTENT_COST, _COST)      # ... a match of that crop
    outside_cost: float = _value(OUTSIDE_COST, _COST)      # ... the part outside a pasted photo
    upright_cost: float = _value(UPRIGHT_COST, _COST)      # ... the query turned back upright
    tilt_cost: float = _value(TILT_COST, _COST)            # ... the query tilted either way
    negative_cost: float = _value(NEGATIVE_COST, _COST)    # ... the query's colour negative
    rank: str = _value("vector", _one_of(*RANK_MODES))     # vector | weighted | hamming
    ref_view_cost: float = _value(REF_VIEW_COST, _COST)    # prior cost a stored crop's match pays
    verify: int = _value(VERIFY_DEPTH, _at_least(0))       # verify an image query's top N (0 = off)
    verify_more: int = _value(VERIFY_MORE, _at_least(0))   # ... and N more when none is confirmed

    def view_costs(self, names: Sequence[str]) -> np.ndarray:
        """The prior cost of each named query view under these settings (``encoders.tta.costs``)."""
        return costs(names, self.flip_cost, self.rot_cost, self.content_cost, self.half_turn_cost,
                     self.outside_cost, self.upright_cost, self.tilt_cost, self.negative_cost)


@dataclass
class StorageConfig:
    """What is stored and where: fixed when an index is created (count, widths, stored crops)."""
    index_dir: str = _value("var/index", _rule(bool, "a folder"))  # shards in index_dir/shard-<i>
    num_shards: int = _value(1, _at_least(1))
    index_kind: str | None = _value(None, _one_of(None, *INDEX_KINDS))  # None = shards.index default
    bits: int = _value(0, _rule(lambda v: v >= 0 and v % 8 == 0, "0 (the encoder's) or a multiple of 8"))
    index_params: dict = _value({})
    snapshot_every: int = _value(100_000, _at_least(1))  # WAL records between snapshots
    vectors: bool = True             # a new index stores the encoder's int8 side vectors (re-rank)
    keypoints: bool = True           # a new index stores each image's ORB keypoints (verification)
    # views stored with each indexed image: crops, or its mirror for dedup over stored records
    # (encoders.tta.REF_VIEWS; [] = one code per image)
    ref_views: list = _value(list(DEFAULT_REF_VIEWS), _rule(
        lambda v: all(n in REF_VIEWS for n in v), "a list of " + ", ".join(REF_VIEWS)))
    placement: str = _value("auto", _one_of("auto", "resource", "local"))  # resource: {"shard": 1}
    namespace: str = _value("neardup", _rule(bool, "a Ray namespace"))


@dataclass
class ServeConfig:
    """The HTTP service: address, bearer tokens and request limits."""
    host: str = "127.0.0.1"
    port: int = _value(8000, _within(0, 65535))
    ingress: str = _value("auto", _one_of("auto", "proxy", "direct"))  # who parses HTTP: rayapp.ingress
    token: str | None = None         # bearer token for writes; None = writes open (demo only)
    read_token: str | None = None    # bearer token for reads (search, hash, status, get); None = open
    body_timeout_s: float = _value(10.0, _rule(lambda v: v > 0, "> 0"))  # then a 408
    max_body_bytes: int = _value(20 * 1024 * 1024, _at_least(1))
    max_batch_items: int = _value(64, _at_least(1))
    rate_limit_per_s: float = _value(200.0, _rule(lambda v: v > 0, "> 0"))  # per client IP
    shard_timeout_s: float = _value(2.0, _rule(lambda v: v > 0, "> 0"))
    default_k: int = _value(10, _at_least(1))
    max_k: int = _value(1000, _at_least(1))
    max_radius: int = _value(64, _at_least(0))


@dataclass
class Config:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def to_dict(self) -> dict:
        """Every value, nested by part (what Ray tasks are handed to rebuild it)."""
        return dataclasses.asdict(self)

    def changed(self) -> dict:
        """Only the values that differ from the defaults, nested by part (what a file needs)."""
        default = Config().to_dict()
        out = {}
        for part, values in self.to_dict().items():
            diff = {k: v for k, v in values.items() if v != default[part][k]}
            if diff:
                out[part] = diff
        return out

    def to_yaml(self) -> str:
        """YAML of :meth:`changed`: loads back (:func:`load_config`) to this config."""
        changed = self.changed()
        return yaml.safe_dump(changed, sort_keys=False) if changed else "{}\n"

    @classmethod
    def from_dict(cls, data: dict | None) -> "Config":
        """A validated Config from a nested dict (either layout, see :func:`upgrade`)."""
        cfg = cls()
        _merge(cfg, upgrade(data or {}))
        return cfg.validate()

    def validate(self) -> "Config":
        """Check every value (type and rule) and normalise the stored crops; raise one
        ValueError naming every bad value as ``part.field``. Returns self."""
        problems = [p for part in dataclasses.fields(self) for p in _problems(part.name, getattr(self, part.name))]
        if self.serve.default_k > self.serve.max_k:
            problems.append(f"serve.default_k ({self.serve.default_k}) must be <= serve.max_k ({self.serve.max_k})")
        if problems:
            raise ValueError("invalid config: " + "; ".join(problems))
        self.storage.ref_views = list(dict.fromkeys(self.storage.ref_views))
        return self


_TYPES = {"str": (str,), "str | None": (str, type(None)), "int": (int,), "float": (int, float),
          "bool": (bool,), "bool | str": (bool, str), "list": (list, tuple), "dict": (dict,)}
_TYPE_WORDS = {"str": "a string", "str | None": "a string or null", "int": "an integer",
               "float": "a number", "bool": "true or false", "bool | str": "true, false or a word",
               "list": "a list", "dict": "a mapping"}


def _problems(part: str, section: Any) -> list[str]:
    out = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        kinds = _TYPES[f.type]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            out.append(f"{part}.{f.name} must be {_TYPE_WORDS[f.type]}; got {value!r}")
            continue
        check, says = f.metadata.get("rule", (None, ""))
        if check is not None and not check(value):
            out.append(f"{part}.{f.name} must be {says}; got {value!r}")
    return out


# The older layout: ``shards:`` was the storage part, and ``encoder:`` also held these keys.
LEGACY_SECTIONS = {"shards": "storage"}
LEGACY_KEYS = {**{f.name: "query" for f in dataclasses.fields(QueryConfig)}, "ref_views": "storage"}


def upgrade(data: dict) -> dict:
    """A config dict in the older layout -> the same values in the parts (a DeprecationWarning
    says which keys moved); one already in the parts is returned as it is."""
    out: dict = {}
    moved = []
    for section, values in data.items():
        target = LEGACY_SECTIONS.get(section, section)
        if target != section:
            moved.append(f"{section}: -> {target}:")
        if section == "encoder" and isinstance(values, dict):
            for key, value in values.items():
                part = LEGACY_KEYS.get(key, "encoder")
                if part != "encoder":
                    moved.append(f"encoder.{key} -> {part}.{key}")
                out.setdefault(part, {})[key] = value
            continue
        if isinstance(values, dict) and isinstance(out.get(target), dict):
            out[target].update(values)
        else:
            out[target] = values
    if moved:
        warnings.warn("config in the older layout: " + ", ".join(moved), DeprecationWarning, stacklevel=3)
    return out


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None,
                env: dict | None = None) -> Config:
    """Build a validated Config from an optional YAML file, NEARDUP_* env vars and overrides.

    ``overrides`` is nested like the YAML (``{"serve": {"port": 9000}}``); None values are ignored.
    """
    cfg = Config()
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {p} must be a mapping of parts (encoder, query, storage, serve)")
        _merge(cfg, upgrade(data))
    _merge(cfg, upgrade(_from_env(os.environ if env is None else env)))
    _merge(cfg, upgrade(overrides or {}))
    return cfg.validate()


def _merge(cfg: Any, data: dict, where: str = "") -> None:
    names = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"unknown config key {key!r} in {where or type(cfg).__name__}; "
                             f"known: {', '.join(sorted(names))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config section {key!r} must be a mapping")
            _merge(current, value, key)
        elif value is not None:
            setattr(cfg, key, _coerce(value, names[key].type))


def _coerce(value: Any, kind: str) -> Any:
    """A string (from the environment or a flag) as a value of the field's type ``kind``."""
    if not isinstance(value, str):
        return value
    word = value.strip().lower()
    if kind == "bool" or (kind == "bool | str" and word in _TRUE + _FALSE):
        return word in _TRUE
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        return value  # validate() names it with the other bad values
    if kind == "dict":
        return yaml.safe_load(value) or {}
    if kind == "list":  # NEARDUP_STORAGE_REF_VIEWS=center70,top_left70
        return [v.strip() for v in value.split(",") if v.strip()]
    if kind == "str | None" and word in ("", "none", "null"):
        return None
    return value


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _from_env(environ: dict) -> dict:
    out: dict = {}
    sections = {f.name for f in dataclasses.fields(Config)} | set(LEGACY_SECTIONS)
    for key, value in environ.items():
        if not key.startswith("NEARDUP_"):
            continue
        parts = key[len("NEARDUP_"):].lower().split("_", 1)
        if len(parts) == 2 and parts[0] in sections:
            out.setdefault(parts[0], {})[parts[1]] = value
    return out
