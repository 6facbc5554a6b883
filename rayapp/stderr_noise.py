"""Drop one known, harmless line of Ray's from the console, and nothing else.

Ray Data creates its actor-pool workers (``MapWorker(MapBatches(EncodeActor))`` and the like)
with ``max_restarts=-1`` and with two constructor arguments passed by ObjectRef (its
DataContext and the map transformer, both ``ray.put`` by Ray Data itself). Ray's core worker
then logs, once per process and at error level, straight to file descriptor 2 from C++::

    [... E ...] core_worker.cc:NNNN: Actor with class name: 'MapWorker(MapBatches(EncodeActor))'
    and ID: '...' has constructor arguments in the object store and max_restarts > 0. ...

(ray-project/ray#57733, for ray-project/ray#53727). It is harmless here: the driver owns both
objects and Ray Data holds them for the whole run, so a restarted worker finds them. Our own
actors do not trigger it (the shard actors' constructor arguments are small and inline). The
only way to avoid it from our side is ``max_restarts=0`` on the pool, which would turn a dead
encoder or writer into a failed ingest instead of a restarted actor; a narrow filter is the
better trade. Ray's C++ logger has no per-message switch (only ``RAY_BACKEND_LOG_LEVEL``, which
would hide every C++ error), so while Ray Data runs, fd 2 goes through a pipe that forwards
everything except lines naming a Ray Data ``MapWorker`` with this message. The line is still
in the driver's log under Ray's session directory.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

# All three on one line: the C++ source, a Ray Data map worker, this message. The same
# warning for any other actor class (ours included) still reaches the console.
_MARKERS = (b"core_worker.cc", b"class name: 'MapWorker(", b"has constructor arguments in the object store")
_PIECES = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def is_known_noise(line: bytes) -> bool:
    """Whether one line (without its end) is Ray Data's constructor-arguments warning."""
    return all(m in line for m in _MARKERS)


def drop_known_noise(chunk: bytes) -> bytes:
    """``chunk`` without the pieces (split after every CR or LF) that are the known line, so a
    progress bar's carriage-return updates pass through untouched."""
    if _MARKERS[2] not in chunk:
        return chunk
    return b"".join(p for p in _PIECES.findall(chunk) if not is_known_noise(p))


@contextlib.contextmanager
def without_known_noise(fd: int = 2) -> Iterator[None]:
    """Within the block, forward everything written to ``fd`` (by Python or by C++) except the
    known line. Chunks are forwarded as they arrive, not held for a newline."""
    try:
        saved = os.dup(fd)
        read_end, write_end = os.pipe()
    except OSError:  # no usable fd 2 (a daemon, a closed stderr): nothing to filter
        yield
        return

    def pump() -> None:
        while chunk := os.read(read_end, 65536):
            data = drop_known_noise(chunk)
            while data:
                data = data[os.write(saved, data):]

    thread = threading.Thread(target=pump, name="neardup-stderr-filter", daemon=True)
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os.dup2(write_end, fd)
    os.close(write_end)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, fd)  # the pipe's last writer is gone: the pump drains it and stops
        thread.join(timeout=5)
        os.close(read_end)
        os.close(saved)
