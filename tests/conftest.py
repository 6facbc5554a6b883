"""Shared fixtures: real image files made from seeds (no external data), and Ray.

Ray, and which test gets which:

- ``ray_local`` (below): one embedded single-node Ray (2 CPUs, no dashboard, worker logs kept
  off the driver) for every test that needs "a Ray" and nothing more: shard actors, the
  router, ingest, dedup and the Serve apps (each Serve module shuts Serve down and kills its
  shards when it ends, so the next finds a clean Ray). It starts on first use, stays up from
  module to module, and stops at the end of the session or before a test that starts a Ray of
  its own. A test that uses it is marked ``ray`` here, automatically.
- Tests that need a Ray of their own start it themselves and are marked ``ray`` in their
  module: several nodes (``test_cluster``: ``rayapp.cluster.start_local_cluster`` over
  ``ray.cluster_utils.Cluster``, and ``ray start``), a metrics export port with counters no
  other test has touched (``test_metrics``), and subprocesses that start an embedded Ray as a
  user's would (``test_cli``, ``test_golden``, ``test_bench_smoke``'s serve load). Before each
  of them the shared Ray is stopped, so no two Rays run at once and none is left over (a
  ``test_cli`` test checks that ``neardup serve`` leaves no Ray processes behind).
- Collection runs the pure modules first, then the modules on the shared Ray, then those with
  a Ray of their own, keeping each module's tests together and in order: the shared Ray starts
  once per session. ``pytest -m "not ray"`` runs the pure tests alone, in seconds.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers_images import EDIT_KINDS, edited_copy, make_photo

# Modules that start a Ray of their own yet are kept byte for byte, so they are marked here:
# test_golden's answers come from `neardup index` and `neardup search` subprocesses.
OWN_RAY_MODULES = ("tests/test_golden.py",)
SHARED_RAY = {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}


class _SharedRay:
    """The session's shared embedded Ray: started on demand, stopped on demand."""

    def __init__(self) -> None:
        self.up = False

    def start(self) -> None:
        import ray
        if self.up and ray.is_initialized():
            return
        if ray.is_initialized():  # a Ray some test left running: not the one to share
            ray.shutdown()
        ray.init(**SHARED_RAY)
        self.up = True

    def stop(self) -> None:
        if self.up:
            import ray
            self.up = False
            ray.shutdown()


_SHARED = _SharedRay()


def pytest_configure(config: pytest.Config) -> None:
    """Registered here, not in pyproject.toml: editing that file makes `make test` reinstall.
    The encoders' on-disk cache (``encoders.onnx_cpu.cache_path``) goes to a folder of this run,
    not the user's home; CLI subprocesses and Ray workers inherit it."""
    import tempfile
    os.environ.setdefault("NEARDUP_CACHE_DIR", tempfile.mkdtemp(prefix="neardup-test-cache-"))
    config.addinivalue_line("markers", "ray: starts Ray, the shared ray_local fixture or a Ray of its "
                                       "own (tests/conftest.py); -m 'not ray' runs the pure tests")


@pytest.fixture(scope="module")
def ray_local() -> None:
    """The shared embedded Ray (see the module docstring); never shut down by a module."""
    _SHARED.start()


def _uses_shared_ray(item: pytest.Item) -> bool:
    return "ray_local" in getattr(item, "fixturenames", ())


def _group(items: list[pytest.Item]) -> int:
    """0: pure, 1: on the shared Ray, 2: a Ray of its own (ordered so the shared one starts once)."""
    if any(_uses_shared_ray(i) for i in items):
        return 1
    return 2 if any(i.get_closest_marker("ray") for i in items) else 0


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests on the shared Ray ``ray`` (before ``-m`` selects), then run the modules in
    groups (pure, shared Ray, own Ray), each module's tests together and in their order."""
    for item in items:
        if _uses_shared_ray(item) or item.nodeid.split("::")[0].endswith(tuple(OWN_RAY_MODULES)):
            item.add_marker(pytest.mark.ray)
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    ordered = sorted(modules.values(), key=_group)  # stable: the modules' order within a group
    items[:] = [item for module in ordered for item in module]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Stop the shared Ray before a test that starts a Ray of its own."""
    if item.get_closest_marker("ray") and not _uses_shared_ray(item):
        _SHARED.stop()


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _SHARED.stop()
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process with pytest's own exit status once everything is reported.

    The session starts and stops Ray in this process several times (the shared Ray, then the
    multi-node and metrics tests), and Ray's native threads from an earlier session can crash
    the interpreter's teardown after the last test has passed (ray-project/ray#31145): CI once
    saw "444 passed" and then a segmentation fault. Nothing is left to run or write by then
    (the cache and every report are written at session finish), so the process skips the
    teardown. ``NEARDUP_TEST_SOFT_EXIT=1`` keeps the normal teardown, to chase such a crash.
    """
    if not _EXIT_STATUS or os.environ.get("NEARDUP_TEST_SOFT_EXIT") == "1":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[-1])


PHOTO_COUNT = 12
_SIZES = [(640, 480), (480, 640), (800, 600), (512, 512)]


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """12 distinct photo-like images: photo_00..photo_11, every third one PNG, the rest JPEG."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(PHOTO_COUNT):
        img = make_photo(i, _SIZES[i % len(_SIZES)])
        if i % 3 == 2:
            img.save(root / f"photo_{i:02d}.png")
        else:
            img.save(root / f"photo_{i:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def edited_dir(photo_dir) -> Path:
    """Edited copies of photo_00..photo_03, one per kind in EDIT_KINDS, saved as JPEG q95 and
    named ``<original stem>__<kind>.jpg`` (the original is in photo_dir)."""
    from PIL import Image

    root = photo_dir.parent / "edited"
    root.mkdir(exist_ok=True)
    for src in sorted(photo_dir.iterdir())[:4]:
        with Image.open(src) as img:
            for kind in EDIT_KINDS:
                edited_copy(img, kind).save(root / f"{src.stem}__{kind}.jpg", quality=95)
    return root
