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
_MODULES = ("encoders.classic", "encoders.deephash")
_loaded = False


def register(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator: register a factory ``f(**kwargs) -> Encoder`` under ``name``."""
    def wrap(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _FACTORIES[name] = factory
        return factory
    return wrap


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        for mod in _MODULES:
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
    _load_builtin()
    name = name or DEFAULT_ENCODER
    if name not in _FACTORIES:
        raise ValueError(f"unknown encoder {name!r}; choose from: {', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[name](**kwargs)
