"""The shard benchmark at toy sizes: it runs end to end and its correctness checks hold.

No timing assertions here (speed targets live in bench/results); this keeps the bench working.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import common
from bench import shard_bench as sb
from bench.shard_exact import gpu_available
from bench.shard_workload import flip_bits, ids_for_rows, rows_for_ids

TINY = ["--grid", "quick", "--queries-per-bucket", "8", "--latency-queries", "16", "--threads", "1",
        "--batch-size", "16", "--add-batch", "700"]


def _result(out_dir, tag):
    [path] = list(out_dir.glob(f"shard_*_{tag}.json"))
    return json.loads(path.read_text())


def test_flip_bits_gives_exact_distances():
    rng = np.random.default_rng(1)
    codes = np.frombuffer(rng.bytes(50 * 16), np.uint8).reshape(50, 16)
    dists = rng.integers(0, 40, 50)
    flipped = flip_bits(codes, dists, rng)
    assert (np.bitwise_count(flipped ^ codes).sum(axis=1) == dists).all()


def test_ids_map_back_to_rows():
    rows = np.array([0, 1, 2, 12345, 10 ** 9], dtype=np.int64)
    ids = ids_for_rows(rows)
    assert len(set(ids.tolist())) == len(rows) and (ids >= 0).all()
    assert (rows_for_ids(ids) == rows).all()


def test_cost_curve_fit_and_counts():
    ns = [10 ** 6, 2 * 10 ** 6, 5 * 10 ** 6, 10 ** 7]
    fit = common.fit_cost_curve(ns, [0.2 + 3e-7 * n for n in ns])
    assert fit["model"] == "linear" and not fit["low_confidence"]
    assert common.eval_cost_curve(fit, 2e8) == pytest.approx(0.2 + 3e-7 * 2e8, rel=1e-6)
    assert common.fit_cost_curve(ns[:2], [1.0, 2.0])["low_confidence"]
    assert common.fit_cost_curve(ns[:1], [1.0]) is None
    assert common.parse_count("1.5M") == 1_500_000 and common.format_count(200_000) == "200k"
    with pytest.raises(ValueError):
        common.parse_count("lots")


def test_machine_info_has_the_basics():
    info = common.machine_info()
    for key in ("cpu_model", "cores", "ram_bytes", "os", "python", "numpy", "faiss", "git", "date"):
        assert info[key] is not None, key


def test_tiny_run_writes_json_plot_and_table(tmp_path):
    assert sb.main(["--sizes", "1500,3000", "--out-dir", str(tmp_path), "--tag", "t", *TINY]) == 0
    doc = _result(tmp_path, "t")
    assert doc["status"] == "complete" and doc["sizes_done"] == [1500, 3000]
    assert doc["machine"]["git"]["commit"] and doc["params"]["sizes"] == [1500, 3000]
    kinds = {r["kind"] for r in doc["results"]}
    assert kinds == {"mihc", "mih", "hnsw", "ivf", "flat"}
    for r in doc["results"]:
        assert r["source"] == "measured" and r["distance_errors"] == 0, r["label"]
        assert r["load"]["same_results"], r["label"]
        assert r["latency"]["n_queries"] == 16 and len(r["latency"]["quantiles_ms"]) == 1001
        assert r["latency"]["passes"] == 3 and len(r["latency"]["pass_p99_ms"]) == 3
        assert r["memory"]["index_bytes"] > 0 and r["build"]["codes_per_s"] > 0
        if r["kind"] == "flat":
            assert all(v == 1.0 for v in r["recall_at_10"].values())
        if r["kind"] == "mihc":  # pigeonhole: 8 chunks x (nflip 1 + 1) finds everything within 15 bits
            assert r["recall_at_10"]["4"] == r["recall_at_10"]["8"] == r["recall_at_10"]["12"] == 1.0
    assert doc["ground_truth"][0]["duplicate_is_nearest"] == 1.0
    assert doc["ground_truth"][0]["exact_search_recall"]["recall_at_10"]["<=16"] == 1.0
    assert {e["source"] for e in doc["extrapolated"]} == {"extrapolated"}
    assert all(e["n"] == 200_000_000 and e["fanout"]["shards"] == 5 for e in doc["extrapolated"])
    assert (tmp_path / f"shard_{doc['params']['date']}_t.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / f"shard_{doc['params']['date']}_t_table.md").read_text()
    assert "**mihc** (default)" in table and "hnsw" in table


def _codes_table(ids, paths, codes):
    return pa.table({"id": ids, "path": paths,
                     "code": pa.FixedSizeBinaryArray.from_buffers(
                         pa.binary(codes.shape[1]), len(codes), [None, pa.py_buffer(codes.tobytes())])})


def test_real_codes_path(tmp_path):
    rng = np.random.default_rng(3)
    refs = np.frombuffer(rng.bytes(40 * 16), np.uint8).reshape(40, 16)
    names = [f"img_{i:02d}" for i in range(40)]
    pq.write_table(_codes_table([f"{n}.jpg" for n in names], [f"/c/{n}.jpg" for n in names], refs),
                   tmp_path / "refs.parquet")
    dists = np.tile([2, 6, 10, 14], 10)
    queries = flip_bits(refs, dists, rng)
    q_names = [f"{n}__crop.jpg" for n in names]
    pq.write_table(_codes_table(q_names, [f"/q/{n}" for n in q_names], queries), tmp_path / "q.parquet")
    argv = ["--sizes", "2000", "--out-dir", str(tmp_path), "--tag", "r", "--kinds", "mihc,flat",
            "--real-codes", str(tmp_path / "refs.parquet"), "--real-queries", str(tmp_path / "q.parquet"), *TINY]
    assert sb.main(argv) == 0
    doc = _result(tmp_path, "r")
    assert doc["real_codes"]["n_queries"] == 40 and doc["real_codes"]["unmatched_queries"] == 0
    for r in doc["results"]:
        assert r["query_source"] == "real"
        assert r["recall_at_10"]["<=16"] == 1.0, r["label"]


def test_bad_flags_give_one_line_errors(capsys, tmp_path):
    assert sb.main(["--sizes", "0", "--out-dir", str(tmp_path)]) == 2
    assert sb.main(["--kinds", "nope", "--out-dir", str(tmp_path)]) == 2
    assert sb.main(["--sizes", "30M", "--out-dir", str(tmp_path)]) == 2
    assert sb.main(["--real-codes", str(tmp_path / "missing.parquet"), "--real-queries", "x",
                    "--sizes", "1000", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown index kind" in err and "--gpu" in err and "not found" in err
    assert not list(tmp_path.glob("*.json"))


def test_gpu_flag_skips_cleanly_without_faiss_gpu(capsys, tmp_path):
    ok, _why = gpu_available()
    if ok:
        pytest.skip("this machine has FAISS GPU support")
    assert sb.main(["--gpu", "--sizes", "1000", "--out-dir", str(tmp_path)]) == 0
    assert "skipped" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_real_codes_matched_by_ground_truth_csv(tmp_path):
    rng = np.random.default_rng(4)
    refs = np.frombuffer(rng.bytes(20 * 16), np.uint8).reshape(20, 16)
    queries = flip_bits(refs[:12], np.full(12, 5), rng)
    pq.write_table(_codes_table([f"r{i:03d}.jpg" for i in range(20)], [f"/refs/r{i:03d}.jpg" for i in range(20)],
                                refs), tmp_path / "refs.parquet")
    q_names = [f"q{i:03d}.jpg" for i in range(12)]
    pq.write_table(_codes_table(q_names, [f"/q/{n}" for n in q_names], queries), tmp_path / "q.parquet")
    # q000..q009 are copies of r000..r009 (listed in reverse order), q010 is a negative, q011 is not listed
    rows = ["query,ref,family"] + [f"q{i:03d}.jpg,r{i:03d}.jpg,jpeg" for i in reversed(range(10))] + ["q010.jpg,,none"]
    (tmp_path / "gt.csv").write_text("\n".join(rows) + "\n")
    argv = ["--sizes", "1000", "--out-dir", str(tmp_path), "--tag", "g", "--kinds", "flat", "--no-save-load",
            "--real-codes", str(tmp_path / "refs.parquet"), "--real-queries", str(tmp_path / "q.parquet"),
            "--real-ground-truth", str(tmp_path / "gt.csv"), *TINY]
    assert sb.main(argv) == 0
    doc = _result(tmp_path, "g")
    assert doc["real_codes"]["n_queries"] == 10 and doc["real_codes"]["unmatched_queries"] == 2
    [r] = doc["results"]
    assert r["recall_at_1"]["<=16"] == 1.0 and r["distance_errors"] == 0


def test_render_merges_a_separate_large_size_run(tmp_path, capsys):
    """A large size measured alone (e.g. --sizes 100M --kinds mihc) joins the main run's fits, and
    a re-measured size replaces the main run's figure for it."""
    small, big = tmp_path / "small", tmp_path / "big"
    assert sb.main(["--sizes", "1500,3000", "--out-dir", str(small), "--tag", "s", "--kinds", "mihc,flat",
                    "--no-save-load", *TINY]) == 0
    assert sb.main(["--sizes", "3000,6000", "--out-dir", str(big), "--tag", "b", "--kinds", "mihc",
                    "--no-save-load", *TINY]) == 0
    [main_json] = list(small.glob("shard_*_s.json"))
    [big_json] = list(big.glob("shard_*_b.json"))
    assert sb.main(["--render", str(main_json), str(big_json)]) == 0
    doc = json.loads(main_json.read_text())
    assert doc["merged"][0]["file"] == big_json.name and doc["merged"][0]["results"] == 2
    assert doc["merged"][0]["replaced"] == 1
    mihc_runs = sorted((r["n"], r.get("merged_from")) for r in doc["results"] if r["label"] == "mihc")
    assert mihc_runs == [(1500, None), (3000, big_json.name), (6000, big_json.name)]
    [mihc] = [e for e in doc["extrapolated"] if e["label"] == "mihc"]
    assert mihc["from_sizes"] == [1500, 3000, 6000]
    assert sb.main(["--render", str(main_json), str(big_json)]) == 0  # idempotent: no duplicates
    doc = json.loads(main_json.read_text())
    assert len([r for r in doc["results"] if r["label"] == "mihc"]) == 3 and doc["merged"][0]["replaced"] == 1
    table = (main_json.parent / f"{main_json.stem}_table.md").read_text()
    assert f"Merged from {big_json.name}" in table and "replacing 1 earlier" in table
    assert sb.main(["--render"]) == 2 and "usage" in capsys.readouterr().err


def test_gpu_bench_runs_and_says_why_it_skipped(tmp_path):
    from bench import gpu
    res = json.loads(gpu.run(["--quick", "--out-dir", str(tmp_path)]).read_text())
    assert [r["backbone"] for r in res["encoders"]] == ["mobilenet_v3_small", "resnet50"]
    assert all(r["cpu_img_per_s"] > 0 for r in res["encoders"]) and res["faiss"]["cpu_qps"] > 0
    if res["cuda_device"] is None:  # CI: the GPU side is null, with the reason
        assert all(r["cuda_img_per_s"] is None and r["cuda_skipped"] for r in res["encoders"])
    else:
        assert res["encoders"][0]["max_bits_differing"] <= 4  # the bundled, trained model


def test_rerank_bench_measures_both_paths(tmp_path):
    from bench import rerank
    res = json.loads(rerank.run(["--entries", "3000", "--queries", "20", "--out-dir", str(tmp_path)]).read_text())
    assert res["weighted_path"]["p50_ms"] > 0 and res["vector_scoring"]["p50_ms"] > 0
    # the records carry 128 bytes of vector beside each 16-byte code
    assert res["vector_scoring"]["store_mapped_bytes"] > res["weighted_path"]["store_mapped_bytes"]


def test_verify_bench_measures_search_extract_and_verify(tmp_path):
    from bench import verify
    res = json.loads(verify.run(["--entries", "2000", "--queries", "10", "--out-dir", str(tmp_path)]).read_text())
    assert res["store_bytes_per_entry"] == res["store_bytes_without_keypoints"] + 8  # a blob slot
    assert res["keypoint_file_bytes"] == 2000 * res["keypoint_bytes_per_image"]
    for part in ("search", "extract_query_keypoints", "verify_top"):
        assert res[part]["p50_ms"] > 0
    assert res["verify_over_search_p50"] > 0


def test_open_loop_summary_counts_errors_unfinished_and_saturation():
    from bench.open_loop import Outcome, summarise
    ok = [Outcome(due=i / 10, sent_late_ms=0.0, latency_ms=20.0, status=200) for i in range(10)]
    bad = [Outcome(due=1.0, sent_late_ms=9.0, status=503, error="http 503")]
    res = summarise(ok + bad, unfinished=2, rate=10.0)
    assert res["ok"] == 10 and res["sent"] == 13 and res["late_sends"] == 1
    assert res["errors"] == {"http 503": 1, "unfinished": 2} and res["error_count"] == 3
    assert res["achieved_per_s"] == pytest.approx(10.0) and res["p50_ms"] == 20.0
    assert res["saturated"]  # requests left unanswered
    assert not summarise(ok, unfinished=0, rate=10.0)["saturated"]
    assert summarise(ok, unfinished=0, rate=40.0)["saturated"]  # answered at a quarter of the rate


def test_pyspy_stacks_are_sorted_into_query_stages():
    from bench.pyspy_stages import IDLE, OTHER, stage_of
    head = "thread (1): MainThread;Thread.run (threading.py:982)"
    assert stage_of(f"{head};EncoderDeployment._views (rayapp/encoder_deployment.py:90);"
                    "load_image (encoders/decode.py:50)", "encoder") == "decode"
    assert stage_of(f"{head};query_variants (encoders/tta.py:113);Encoder.preprocess (encoders/base.py:30)",
                    "encoder") == "views"
    assert stage_of(f"{head};ShardRouter.asearch (rayapp/router.py:180);ShardPool.read (rayapp/shard_pool.py:60);"
                    "ActorHandle._actor_method_call (ray/actor.py:1)", "ingress") == "fan-out"
    assert stage_of(f"{head};Searcher._views (rayapp/searcher.py:101);costs (encoders/tta.py:20)",
                    "ingress") == "merge and rank"  # an encoder module called from the ingress
    assert stage_of(f"{head};ImageEncoder.encode_stacks (rayapp/encoder_deployment.py:130);"
                    "OnnxLogits.__call__ (encoders/onnx_cpu.py:90)", "ingress") == "encode"  # it encodes there
    assert stage_of(f"{head};_WorkItem.run (concurrent/futures/thread.py:58);"
                    "DeepHashEncoder.encode_vectors (encoders/deephash.py:313)", "ingress") == "encode"
    assert stage_of(f"{head};ShardActor.verify (shards/actor.py:300)", "shard") == "verification"
    assert stage_of("thread (2): MainThread;Worker.main_loop (ray/_private/worker.py:1069)", "shard") == IDLE
    assert stage_of(f"{head};Metric._record (ray/util/metrics.py:1)", "ingress") == OTHER
    assert stage_of(f"{head};HTTPProxy.__call__ (ray/serve/_private/proxy.py:1)", "proxy") == "http proxy"


@pytest.mark.ray  # its subprocess starts a Ray of its own
@pytest.mark.parametrize("ingress", ["proxy", "direct"])
def test_serve_load_smoke_against_a_real_server(tmp_path, ingress):
    """`neardup bench serve` end to end at toy rates on one shard node, through Serve's proxy and
    with direct ingress: the product and the floor both answer every request by code and by
    image, and JSON and plot are written."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "rayapp.cli", "bench", "serve", "--nodes", "1", "--index-count", "4",
           "--queries", "2", "--code-rates", "2", "--image-rates", "1", "--seconds", "1", "--grace", "60",
           "--extra-steps", "0", "--out-dir", str(tmp_path), "--tag", "smoke", "--ingress", ingress]
    run = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [path] = list(tmp_path.glob("serve_load_*_smoke.json"))
    doc = json.loads(path.read_text())
    assert doc["machine"]["git"]["commit"] and doc["date"] and doc["params"]["nodes"] == [1]
    [cfg] = doc["configs"]
    assert cfg["nodes"] == 1 and cfg["indexed_images"] == 4 and cfg["ingress"] == ingress
    for mode, sent in (("code", 2), ("image", 1)):  # rate x seconds
        [step] = cfg["modes"][mode]["steps"]
        for target in ("product", "floor"):
            assert step[target]["sent"] == step[target]["ok"] == sent
            assert step[target]["error_count"] == 0 and step[target]["p99_ms"] > 0
        assert step["ratio"]["p50_ms"] > 0
        assert cfg["modes"][mode]["light_load"]["rate"] == step["rate"]
    assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_dedup_bench_leaves_out_copies_that_show_the_same_pasted_photo(tmp_path):
    from bench.dedup import _truth
    (tmp_path / "refs").mkdir()
    for name in ("r1.jpg", "r2.jpg"):
        (tmp_path / "refs" / name).write_bytes(b"")
    (tmp_path / "ground_truth.csv").write_text(
        "query,ref,family\nq1.jpg,r1.jpg,paste_into\nq2.jpg,r2.jpg,overlay\nq3.jpg,r1.jpg,overlay\n"
        "q4.jpg,r2.jpg,jpeg\nq5.jpg,,paste_into\n")
    (tmp_path / "pasted.csv").write_text("query,other_photo\nq1.jpg,n1.jpg\nq2.jpg,n1.jpg\nq3.jpg,n2.jpg\n")
    assert _truth(tmp_path) == {"r1.jpg": "r1.jpg", "r2.jpg": "r2.jpg", "q3.jpg": "r1.jpg", "q4.jpg": "r2.jpg"}


@pytest.mark.skipif(not __import__("encoders.onnx_cpu", fromlist=["x"]).available(),
                    reason="onnxruntime and onnx are not installed")
def test_encoder_runtime_bench_compares_both_runtimes(tmp_path):
    from bench import encoder_runtime
    out = tmp_path / "runtime.json"
    assert encoder_runtime.main(["--repeats", "3", "--rounds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["runtimes"]) == {"torch", "onnx"} and set(result["ratio_onnx_to_torch_ms"]) == {"1", "8", "64"}
    assert result["agreement"]["images"] == 64 and result["agreement"]["max_bit_flips"] <= 1


def test_paste_finder_bench_scores_every_rule_on_the_same_trials(tmp_path):
    from bench import paste_finder
    photos = str(common.REPO_ROOT / "rayapp" / "samples")
    res = json.loads(paste_finder.run(["--photos", photos, "--n", "12", "--out-dir", str(tmp_path)]).read_text())
    for rule in ("frame_first", "both_boxes", "with_runners_up"):
        assert sum(res[rule].values()) == 12
    # the same trials, the same finders: more boxes can only find more
    assert res["with_runners_up"]["none"] == res["both_boxes"]["none"] == res["frame_first"]["none"]
    assert res["with_runners_up"]["found"] >= res["both_boxes"]["found"] >= res["frame_first"]["found"] > 0


def test_big_photos_bench_times_both_sizes():
    """bench.big_photos times a big photo's query steps at working size and at full size, and
    the working size leaves codes where full size puts them (within a few bits)."""
    from bench import big_photos
    result = big_photos.run(count=2, rounds=1)
    rows = {r["long_side"]: r for r in result["table"]}
    assert set(rows) == set(big_photos.SIDES)
    for row in rows.values():
        assert row["working size"]["total"] > 0 and row["full size"]["total"] > 0
        assert row["code_bits_moved"]["max"] <= 8


def test_big_photos_bench_times_each_format_beside_jpeg():
    from bench import big_photos
    (row,) = big_photos.decode_by_format((700,), count=1, rounds=1)
    assert set(big_photos.FORMATS) <= set(row) and row["JPEG"]["ratio_to_jpeg"] == 1.0
    assert all(row[f]["decode_ms"] > 0 and row[f]["bytes_median"] > 0 for f in big_photos.FORMATS)


def _run_bench(tmp_path, module: str, *args: str) -> dict:
    """``python -m bench.<module> ARGS --out-dir tmp_path --tag smoke`` as its own program from
    the checkout -> the JSON it wrote."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", f"bench.{module}", *args, "--out-dir", str(tmp_path), "--tag", "smoke"]
    run = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [path] = list(tmp_path.glob(f"{module}_*_smoke.json"))
    return json.loads(path.read_text())


@pytest.mark.ray  # its subprocess starts a Ray of its own
def test_fanout_bench_times_the_router_beside_the_floor(tmp_path):
    """bench.fanout times the no-op floor, the old call by argument and the router over real
    shard actors in one run, and writes the JSON with each path's ratio to the floor."""
    doc = _run_bench(tmp_path, "fanout", "--shards", "2", "--queries", "5", "--rounds", "1")
    assert doc["shards"] == 2 and doc["machine"]["git"]["commit"]
    assert set(doc["ratio_to_floor"]) == {"floor", "by_argument", "router"}
    assert doc["ratio_to_floor"]["floor"] == 1.0 and all(v > 0 for v in doc["ms_per_query"].values())


@pytest.mark.ray  # its subprocess starts a Ray and Serve of its own
def test_ingress_floor_bench_times_both_ingress_forms(tmp_path):
    """bench.ingress_floor answers through a bare deployment and an empty FastAPI ingress behind
    one proxy and writes each run's percentiles and their ratio."""
    (one,) = _run_bench(tmp_path, "ingress_floor", "--requests", "5", "--rounds", "1", "--runs", "1")["runs"]
    assert set(one) == {"bare", "fastapi", "ratio_fastapi_to_bare"} and one["bare"]["p50_ms"] > 0


def test_probe_edits_draw_every_family_from_a_real_photo():
    """Each family of the fourth edit implementation makes a new RGB picture of a real photo."""
    import random

    from PIL import Image, ImageChops

    from bench.probe_edits import FAMILIES
    from tests.helpers_images import SAMPLES
    with Image.open(SAMPLES[0]) as im:
        photo = im.convert("RGB")
    for name, edit in FAMILIES.items():
        out = edit(photo, random.Random(0), SAMPLES[1:4])
        assert out.mode == "RGB" and min(out.size) >= 16, name
        assert out.size != photo.size or ImageChops.difference(out, photo).getbbox(), name
