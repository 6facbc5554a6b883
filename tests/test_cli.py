"""The neardup console script, run as a user would: real files, real subprocesses."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers_net import free_port

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "rayapp" / "samples").glob("*.jpg"))
NEARDUP = [sys.executable, "-m", "rayapp.cli"]


def run(*args, timeout=300):
    return subprocess.run([*NEARDUP, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "images"
    root.mkdir()
    for f in SAMPLES[:8]:
        shutil.copy(f, root / f.name)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


@pytest.fixture(scope="module")
def query(images, tmp_path_factory) -> Path:
    """A re-encoded, slightly cropped copy of the first image."""
    q = tmp_path_factory.mktemp("q") / "query.jpg"
    with Image.open(SAMPLES[0]) as im:
        w, h = im.size
        im.convert("RGB").crop((4, 4, w - 4, h - 4)).save(q, quality=60)
    return q


def test_encode_writes_parquet_and_errors(images, tmp_path):
    out = tmp_path / "codes.parquet"
    r = run("encode", images, "--encoder", "pdq", "--out", out)
    assert r.returncode == 0, r.stderr
    t = pq.read_table(out)
    assert t.column_names == ["id", "path", "code", "encoder"]
    assert t.schema.field("code").type == pa.binary(32)
    assert t.num_rows == 8 and set(t["encoder"].to_pylist()) == {"pdq"}
    errors = (tmp_path / "codes.errors.csv").read_text()
    assert "corrupt.png" in errors
    assert "1 unreadable" in r.stdout


@pytest.mark.parametrize("args, message", [
    (("encode", "/no/such/dir", "--out", "x.parquet"), "not found"),
    (("encode", "rayapp/samples", "--encoder", "nope", "--out", "x.parquet"), "unknown encoder"),
    (("search", "rayapp/samples/" + SAMPLES[0].name, "--index-dir", "/no/such/index"), "no index at"),
    (("search", "x.jpg", "--index-dir", "i", "--k", "0"), "Invalid value for '--k'"),
    (("config", "--config", "/no/such.yaml"), "config file not found"),
])
def test_errors_are_one_line_and_nonzero(args, message):
    r = run(*args)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr


RAY = pytest.mark.ray  # the subprocess starts an embedded Ray of its own
#: Ray's metrics export interval for `neardup serve` here (Ray's setting, through the environment
#: as a user would set it; its default is 10 s): the metrics show up within a second or two
METRICS_EXPORT_MS = "1000"


@RAY
def test_index_then_search_json(images, query, tmp_path):
    index = tmp_path / "index"
    r = run("index", images, "--index-dir", index, "--encoder", "pdq", "--shards", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "indexed 8, errors 1" in r.stdout
    assert "constructor arguments in the object store" not in r.stderr  # ray-project/ray#57733, filtered
    r = run("search", query, SAMPLES[-1], "--index-dir", index, "--k", "3", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [ln["query"] for ln in lines] == [str(query), str(SAMPLES[-1])]
    first = lines[0]
    assert first["partial"] is False and len(first["results"]) == 3
    top = first["results"][0]
    # the top hits were spatially verified by the query's keypoints (shards.verify)
    assert set(top) - {"confidence"} == {"id", "path", "distance", "rank", "variant", "inliers"} and top["variant"] == "original"
    assert top["inliers"] > max(r.get("inliers", 0) for r in first["results"][1:])
    assert top["id"] == SAMPLES[0].name and top["distance"] <= 31
    assert lines[1]["results"][0]["distance"] > top["distance"]
    # a mirrored copy: PDQ alone is far off; --tta flip also searches the mirror image. Text
    # output this time (one Ray start-up less): a hit's line is its distance, confidence, id and
    # how it matched
    mirrored = tmp_path / "mirrored.jpg"
    with Image.open(SAMPLES[1]) as im:
        im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored, quality=90)
    r = run("search", mirrored, "--index-dir", index, "--k", "1", "--tta", "flip")
    assert r.returncode == 0, r.stderr
    assert f"{SAMPLES[1].name}  (as flip" in r.stdout
    hit = re.search(rf"^ +(\d+)(?: +[\d.]+)? +{re.escape(SAMPLES[1].name)}  \(as flip[,)]", r.stdout, re.M)
    assert hit and int(hit.group(1)) <= 10, r.stdout


@RAY
def test_dedup_of_a_folder(images, query, tmp_path):
    folder = tmp_path / "d"
    shutil.copytree(images, folder)
    shutil.copy(query, folder / "copy_of_first.jpg")
    out = tmp_path / "dedup"
    r = run("dedup", folder, "--encoder", "pdq", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    group = next(line for line in r.stdout.splitlines() if line.startswith("group 1: "))
    assert "copy_of_first.jpg" in group and SAMPLES[0].name in group
    assert "1 groups among 9 images" in r.stdout  # the corrupt file is not an image
    html = (out / "report.html").read_text()
    assert "data:image/jpeg;base64," in html and "group 1" in html and "keep" in html
    assert pq.read_table(out / "groups.parquet").num_rows == 2
    assert run("dedup", folder, "--index-dir", out).returncode == 2  # PATHS or an index, not both


@pytest.mark.slow
@RAY
def test_demo_shows_real_matches(tmp_path):
    r = run("demo", "--exit", "--port", free_port(), "--out", tmp_path / "demo", timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "found" in r.stdout and "API listening at" in r.stdout
    assert (tmp_path / "demo" / "dedup" / "report.html").is_file() and "group 1: " in r.stdout
    groups = [line.split(": ", 1)[1].split(", ") for line in r.stdout.splitlines()
              if line.strip().startswith("group ")]
    # no false group: each holds one bundled sample and copies made from it (named after it)
    assert all(len({name.split(".")[0] for name in names}) == 1 for names in groups), groups
    # the dedup job reads the copies again, so a mirrored or turned copy is found too
    grouped = {name for names in groups for name in names}
    assert any(".hflip." in n for n in grouped) and any(".rot90." in n for n in grouped), groups


def test_config_prints_what_differs_from_the_defaults(tmp_path):
    import yaml
    r = run("config", "--config", "neardup.yaml")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout) == {"storage": {"index_dir": "/mnt/neardup/index"}, "serve": {"host": "0.0.0.0"}}
    every = yaml.safe_load(run("config", "--all").stdout)
    assert list(every) == ["encoder", "query", "storage", "serve"] and every["query"]["tta"] == "flip_turns"
    bad = tmp_path / "bad.yaml"
    bad.write_text("query: {rank: best}\n")
    r = run("config", "--config", bad)
    assert r.returncode == 1 and r.stderr.startswith("neardup: error: invalid config: query.rank must be one of")


@pytest.mark.parametrize("args", [("eval", "--help"), ("train", "--help"), ("bench", "shard", "--help")])
def test_passthrough_commands_show_their_flags(args):
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert "usage: python -m" in r.stdout or "usage: neardup eval" in r.stdout


def _scrape_neardup_metrics(port: int, metrics_port: int) -> None:
    """After a few queries, the single-node server's metrics port serves the query latency and
    the shard gauges (Ray exports them every METRICS_EXPORT_MS milliseconds)."""
    import time
    import httpx
    for _ in range(3):
        httpx.post(f"http://127.0.0.1:{port}/v1/search", json={"code": "00" * 32}, timeout=30)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        except httpx.HTTPError:
            text = ""
        if "ray_neardup_query_latency_ms" in text and "ray_neardup_shard_codes" in text:
            return
        time.sleep(0.5)
    pytest.fail("ray_neardup_* metrics never appeared on the metrics port")


@RAY
def test_serve_runs_until_sigterm_and_leaves_no_ray_behind(tmp_path):
    import signal
    import time

    import httpx
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "RAY_metrics_report_interval_ms": METRICS_EXPORT_MS}
    proc = subprocess.Popen([*NEARDUP, "serve", "--index-dir", str(tmp_path / "idx"), "--encoder", "pdq",
                             "--shards", "1", "--port", str(port), "--metrics-port", str(metrics_port)],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        status = httpx.get(f"http://127.0.0.1:{port}/v1/status", timeout=30).json()
        assert status["shards"][0]["count"] == 0
        assert status["ingress"] == "direct"  # an embedded Ray: the Ingress replica holds the port
        _scrape_neardup_metrics(port, metrics_port)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"metrics: http://127.0.0.1:{metrics_port}/metrics" in out and "dashboard: http://" in out
    for _ in range(150):  # the embedded Ray's raylet goes away with the process
        if subprocess.run(["pgrep", "-f", "gcs_server"], capture_output=True).returncode:
            break
        time.sleep(0.2)
    else:
        pytest.fail("Ray processes were left running after neardup serve exited")
