"""Open-loop load on a real ``neardup serve``, by code and by image, beside Ray Serve's own floor.

For each shard-node count (``--nodes 1,2,5``) a simulated cluster starts with one shard actor per
node (``bench.serve_stack``), ``neardup serve`` attaches to it and is filled over HTTP with photos;
then the bare floor (``bench.serve_floor``: one Serve deployment fanning out to as many no-op
actors) is deployed beside it, behind the same proxy. Both get the same open-loop schedule
(``bench.open_loop``) at each rate, alternating which goes first so drifting load hits both
alike. Each target stops climbing once it saturates; if it never did at the listed rates, the
top rate is doubled (up to ``--extra-steps`` times) to find its saturation throughput.

Reported per node count and query kind: P50, P95, P99, achieved throughput and errors at each
offered rate, the throughput at saturation, and every figure as a ratio to the floor.

    python -m bench.serve_load --photos /path/to/photos --index-count 200 --wait-quiet 1.0
    neardup bench serve --nodes 1 --code-rates 2 --image-rates 1 --seconds 2   # a smoke run

The JSON (machine, date, git revision, parameters, notes, every step) and a plot go to
bench/results/serve_load_DATE[_TAG].json and .png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.cpu_share import CpuShare, tree_percent, wait_drained
from bench.open_loop import run_step
from bench.serve_floor import delete_floor, deploy_floor
from bench.serve_stack import ServeStack, add_run_args, finish_run, start_run

TARGETS = ("product", "floor")
RATIO_KEYS = ("p50_ms", "p95_ms", "p99_ms", "achieved_per_s")
WARM_UP_REQUESTS = 4
DRAINED_MARGIN = 15.0  # % of a core over the idle cluster's own use: the server holds no more work


def _rates(text: str) -> list[float]:
    rates = [float(x) for x in text.split(",") if x.strip()]
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"rates must be positive numbers, got {text!r}")
    return sorted(rates)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="1,2,5", help="shard-node counts, one cluster each")
    ap.add_argument("--code-rates", type=_rates, default=_rates("20,60,180"), help="requests/s by code")
    ap.add_argument("--image-rates", type=_rates, default=_rates("4,12,36"), help="requests/s by image")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each step's schedule")
    ap.add_argument("--grace", type=float, default=5.0, help="seconds to wait for answers after a step")
    ap.add_argument("--extra-steps", type=int, default=2, help="doublings of the top rate to reach saturation")
    add_run_args(ap)
    args = ap.parse_args(argv)
    args.nodes = [int(x) for x in str(args.nodes).split(",") if x.strip()]
    if not args.nodes or min(args.nodes) < 1:
        ap.error("--nodes needs positive counts")
    return args


def _bodies(images: list[bytes], codes: list[str]) -> dict[str, list[dict]]:
    """The request bodies of each query kind, as httpx ``post`` keyword arguments."""
    return {"code": [{"json": {"code": c, "k": 10}} for c in codes],
            "image": [{"files": {"file": ("q.jpg", b, "image/jpeg")}, "data": {"k": "10"}} for b in images]}


def _paths(prefix: str) -> dict[str, str]:
    return {"product": "/v1/search", "floor": f"{prefix}/v1/search"}


def _warm_up(url: str, paths: dict[str, str], bodies: list[dict]) -> None:
    """A few requests to each target at a low rate, so the first step does not pay for cold paths."""
    for path in paths.values():
        run_step(url, path, bodies[:WARM_UP_REQUESTS], rate=4.0, seconds=WARM_UP_REQUESTS / 4.0)


def _schedule(rates: list[float], extra_steps: int) -> list[float]:
    """The listed rates, then the top one doubled ``extra_steps`` times (used only while a target
    has not saturated)."""
    return rates + [rates[-1] * 2 ** (i + 1) for i in range(extra_steps)]


def measured_step(url: str, path: str, bodies: list[dict], rate: float, args, idle_percent: float) -> dict:
    """One open-loop step, with the CPU this run and other programs used meanwhile, after which
    the server is left to finish whatever it still holds (so it cannot spill into the next)."""
    share = CpuShare()
    step = run_step(url, path, bodies, rate, args.seconds, args.grace)
    step.update(share.stop())
    step["drain_s"] = wait_drained(idle_percent + DRAINED_MARGIN)
    return step


def sweep(url: str, paths: dict[str, str], bodies: list[dict], rates: list[float], args) -> list[dict]:
    """Every step of one query kind: at each rate, each target that has not yet saturated, the
    two in alternating order. -> rows of ``{"rate", "product", "floor", "ratio"}``."""
    rows, saturated = [], set()
    idle = tree_percent(2.0)
    for i, rate in enumerate(_schedule(rates, args.extra_steps)):
        if set(TARGETS) <= saturated:
            break
        row: dict = {"rate": rate}
        order = TARGETS if i % 2 == 0 else TARGETS[::-1]
        for target in order:
            if target in saturated:
                continue
            step = measured_step(url, paths[target], bodies, rate, args, idle)
            print(f"  {target:7s} {rate:7.1f}/s  p50 {step['p50_ms']}  p99 {step['p99_ms']}  "
                  f"achieved {step['achieved_per_s']}/s  errors {step['error_count']}  "
                  f"others' CPU {step['others_cpu_percent']}%", flush=True)
            row[target] = step
            if step["saturated"]:
                saturated.add(target)
        if "product" in row or "floor" in row:
            row["ratio"] = ratios(row.get("product"), row.get("floor"))
            rows.append(row)
    return rows


def ratios(product: dict | None, floor: dict | None) -> dict | None:
    """Each latency and throughput figure of the product divided by the floor's at the same rate."""
    if not product or not floor:
        return None
    return {k: (round(product[k] / floor[k], 3) if product.get(k) and floor.get(k) else None) for k in RATIO_KEYS}


def saturation(rows: list[dict]) -> dict:
    """Per target, the highest achieved throughput and whether any step saturated (if not, the
    figure is only a lower bound of its capacity); and the product's over the floor's: ``ratio``
    when both saturated, ``ratio_at_most`` when only the product did."""
    out = {}
    for target in TARGETS:
        steps = [r[target] for r in rows if target in r]
        out[target] = {"max_achieved_per_s": max((s["achieved_per_s"] for s in steps), default=None),
                       "reached": any(s["saturated"] for s in steps)}
    p, f = out["product"]["max_achieved_per_s"], out["floor"]["max_achieved_per_s"]
    if p and f and out["product"]["reached"] and out["floor"]["reached"]:
        out["ratio"] = round(p / f, 3)
    elif p and f and out["product"]["reached"]:  # the floor's capacity is at least f
        out["ratio_at_most"] = round(p / f, 3)
    return out


def light_load(rows: list[dict]) -> dict | None:
    """The lowest rate's figures for both targets and their ratio: latency without queueing."""
    both = [r for r in rows if "product" in r and "floor" in r]
    if not both:
        return None
    r = both[0]
    return {"rate": r["rate"], **{t: {k: r[t][k] for k in RATIO_KEYS} for t in TARGETS}, "ratio": r["ratio"]}


def measure_nodes(n: int, photos: list[Path], queries: list[bytes], args) -> dict:
    """One cluster with ``n`` shard nodes: bring it up, fill it, load product and floor by code
    and by image, take it down."""
    print(f"{n} shard node(s): starting", flush=True)
    with ServeStack(n) as stack:
        indexed = stack.index(photos)
        codes = stack.codes_of(queries)
        prefix = deploy_floor(stack.shard_node_ids())
        paths = _paths(prefix)
        modes = {}
        try:
            for mode, bodies in _bodies(queries, codes).items():
                print(f" {mode}", flush=True)
                _warm_up(stack.url, paths, bodies)
                rows = sweep(stack.url, paths, bodies, args.code_rates if mode == "code" else args.image_rates, args)
                modes[mode] = {"steps": rows, "saturation": saturation(rows), "light_load": light_load(rows)}
        finally:
            delete_floor()
        return {"nodes": n, "indexed_images": indexed, "timings_s": stack.timings_s, "modes": modes}


def run(args: argparse.Namespace) -> dict:
    """Measure every node count -> the result document."""
    begin = start_run("serve_load", args)
    configs = [measure_nodes(n, begin.photos, begin.queries, args) for n in args.nodes]
    return {**begin.header, "method": __doc__.split("\n\n")[1].replace("\n", " "), "configs": configs}


def plot(result: dict, path: Path) -> None:
    """P99 and achieved throughput against the offered rate, by code (top) and by image (bottom):
    one colour per node count, the product solid and the floor dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for row, mode in enumerate(("code", "image")):
        for i, cfg in enumerate(result["configs"]):
            steps = cfg["modes"].get(mode, {}).get("steps", [])
            for target, style in (("product", "-"), ("floor", "--")):
                pts = [(s["rate"], s[target]) for s in steps if target in s]
                if not pts:
                    continue
                look = {"color": f"C{i}", "marker": "o", "mfc": "none" if target == "floor" else f"C{i}",
                        "label": f"{cfg['nodes']} node(s), {target}"}
                rates = [r for r, _ in pts]
                axes[row][0].plot(rates, [s["p99_ms"] for _, s in pts], style, **look)
                axes[row][1].plot(rates, [s["achieved_per_s"] for _, s in pts], style, **look)
        axes[row][0].set_ylabel(f"P99 ms, by {mode}")
        axes[row][1].set_ylabel(f"achieved /s, by {mode}")
        for ax in axes[row]:
            ax.set_xscale("log")
            ax.set_xlabel("offered requests/s (open loop)")
        axes[row][0].set_yscale("log")
        lim = max([s["rate"] for c in result["configs"] for s in c["modes"].get(mode, {}).get("steps", [])] or [1])
        axes[row][1].plot([0.1, lim], [0.1, lim], ":", color="grey", lw=1)
    axes[0][0].legend(fontsize=7)
    git = result["machine"]["git"]
    fig.suptitle(f"neardup serve vs bare Serve fan-out (dashed), {result['machine']['cores']} cores, "
                 f"{result['date'][:10]}, {(git['commit'] or '?')[:8]}{'+dirty' if git['dirty'] else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = finish_run("serve_load", args, run(args))
    plot(json.loads(out.read_text()), out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
