"""Encoder registry, in the style of timm: ``register`` a factory, ``get_encoder`` by name.

>>> from encoders import get_encoder
>>> enc = get_encoder("pdq")
>>> codes = enc.encode([image])     # (1, 32) uint8
"""
from __future__ import annotations

import importlib
from typing import Callable

from encoders.base import Encoder

# The one setting that picks the default encoder everywhere (CLI, ingest, Serve, demo).
DEFAULT_ENCODER = "deephash"

_FACTORIES: dict[str, Callable[..., Encoder]] = {}
#: The module that registers each built-in encoder. Only the one asked for is imported: deephash
#: brings in torch (unless its ONNX program is cached: ``encoders.deephash_onnx``), which a PDQ
#: or pHash process (a CLI run, a Ray worker) would load for nothing.
_BUILTIN = {"pdq": "encoders.classic", "phash": "encoders.classic", "deephash": "encoders.deephash_onnx"}
_loaded = False


def register(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator: register a factory ``f(**kwargs) -> Encoder`` under ``name``."""
    def wrap(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _FACTORIES[name] = factory
        return factory
    return wrap


def _load_builtin(name: str | None = None) -> None:
    """Import the module of the built-in encoder ``name``, or of every built-in one."""
    global _loaded
    if name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    elif not _loaded:
        for mod in dict.fromkeys(_BUILTIN.values()):
            importlib.import_module(mod)
        _loaded = True


def list_encoders() -> list[str]:
    """Names of all registered encoders."""
    _load_builtin()
    return sorted(_FACTORIES)


def get_encoder(name: str | None = None, **kwargs) -> Encoder:
    """Build the encoder registered as ``name`` (default: DEFAULT_ENCODER).

    Keyword arguments go to the factory (e.g. ``weights="my.safetensors"`` for deephash).
    Raises ValueError for an unknown name.
    """
    name = name or DEFAULT_ENCODER
    _load_builtin(name)
    if name not in _FACTORIES:
        raise ValueError(f"unknown encoder {name!r}; choose from: {', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[name](**kwargs)
