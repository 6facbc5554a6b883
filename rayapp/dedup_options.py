"""The options ``neardup dedup`` and ``python -m rayapp.dedup`` share, written once.

Kept apart from ``rayapp.dedup`` so the CLI can declare them without importing Ray.
"""
from __future__ import annotations

from typing import Callable

import click

_OPTIONS = (
    click.option("--out", "out_dir", default="neardup-dedup", show_default=True,
                 help="Where edges.parquet, groups.parquet, groups.csv and report.html go."),
    click.option("--min-confidence", default=0.99, show_default=True, type=click.FloatRange(0, 1),
                 help="Keep matches at least this likely to be copies (calibrated precision)."),
    click.option("--radius", default=None, type=int,
                 help="Encoders without a confidence curve: matches within this many bits (default: the encoder's)."),
    click.option("--views", default="full", show_default=True, type=click.Choice(["full", "stored"]),
                 help="full: read each image again and search all its query views; stored: its stored record only."),
    click.option("--overlap-check/--no-overlap-check", default=None,
                 help="Read each matched pair again and drop look-alikes whose aligned overlap disagrees "
                      "(default: with --views full)."),
    click.option("--k", default=20, show_default=True, type=click.IntRange(1, 1000),
                 help="Matches looked at per image."),
    click.option("--batch", default=256, show_default=True, type=click.IntRange(1, 10_000),
                 help="Images per task."),
    click.option("--address", default=None, help="Ray address of a running cluster (default: embedded)."),
    click.option("--quiet", is_flag=True, help="No progress bars."),
)


def job_options(command: Callable) -> Callable:
    """Decorate a click command with the dedup job's options (out_dir, min_confidence, radius,
    views, overlap_check, k, batch, address, quiet)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command
