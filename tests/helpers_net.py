"""Network helpers for tests that start real servers."""
from __future__ import annotations

import random
import socket

# Ray binds its own ports after a test has picked one: fixed defaults such as the dashboard
# agent's 52365, random ones from the kernel's ephemeral range (32768-60999 on Linux), and
# workers from 10002-19999. Picking from the gap between them keeps a test's server port from
# being taken before the server binds it (CI once drew 52365).
_LOW, _HIGH = 20000, 32000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that Ray will not take."""
    for _ in range(200):
        port = random.randint(_LOW, _HIGH)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_LOW}-{_HIGH}")
