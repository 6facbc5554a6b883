"""The console filter drops Ray Data's constructor-arguments line (ray-project/ray#57733) and
nothing else: not the same warning for another actor class, not other core_worker errors, not
a progress bar's carriage-return updates."""
from __future__ import annotations

import os

from rayapp.stderr_noise import drop_known_noise, without_known_noise

TAIL = (b"has constructor arguments in the object store and max_restarts > 0. If the arguments in "
        b"the object store go out of scope or are lost, the actor restart will fail. See "
        b"https://github.com/ray-project/ray/issues/53727 for more details.")
RAY_DATA = (b"[2026-12-05 14:30:01,123 E 4242 4242] core_worker.cc:2465: Actor with class name: "
            b"'MapWorker(MapBatches(EncodeActor))' and ID: 'dc601370a1bc5793965e00ab02000000' " + TAIL + b"\n")
RAY_DATA_JSON = (b'{"asctime":"2026-12-05 14:30:01,123","levelname":"E","message":"Actor with class name: '
                 b"'MapWorker(MapBatches(ShardWriter))' and ID: '9e17' " + TAIL
                 + b'","filename":"core_worker.cc","lineno":2465}\n')
OURS = (b"[2026-12-05 14:30:01,123 E 4242 4242] core_worker.cc:2465: Actor with class name: "
        b"'RayShardActor' and ID: 'ab12' " + TAIL + b"\n")
OTHER = b"[2026-12-05 14:30:02,000 E 4242 4242] core_worker.cc:900: Failed to register actor.\n"


def test_drops_ray_datas_line_in_both_log_formats():
    assert drop_known_noise(RAY_DATA) == b""
    assert drop_known_noise(RAY_DATA_JSON) == b""
    assert drop_known_noise(b"before\n" + RAY_DATA + b"after\n") == b"before\nafter\n"


def test_keeps_everything_else():
    for chunk in (OURS, OTHER, b"indexing:  50%|#####     | 8/16\r", b"no newline at the end"):
        assert drop_known_noise(chunk) == chunk
    bar = b"\rindexing:   0%|          | 0/16"
    assert drop_known_noise(bar + b"\r" + RAY_DATA + bar) == bar + b"\r" + bar


def test_filter_covers_writes_to_fd_2_and_restores_it(capfd):
    with without_known_noise():
        os.write(2, RAY_DATA)
        os.write(2, OTHER)
        os.write(2, OURS)
    os.write(2, b"after the block " + RAY_DATA)
    err = capfd.readouterr().err
    assert err == (OTHER + OURS + b"after the block " + RAY_DATA).decode()
