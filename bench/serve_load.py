"""Open-loop load on a real ``neardup serve``, by code and by image, beside Ray Serve's own floor.

For each shard-node count (``--nodes 1,2,5``) a simulated cluster starts with one shard actor per
node (``bench.serve_stack``), ``neardup serve`` attaches to it and is filled over HTTP with photos;
then the bare floor (``bench.serve_floor``: one Serve deployment fanning out to as many no-op
actors) is deployed beside it, behind the same proxy. Both get the same open-loop schedule
(``bench.open_loop``) at each rate, alternating which goes first so drifting load hits both
alike. Each target stops climbing once it saturates; if it never did at the listed rates, the
top rate is doubled (up to ``--extra-steps`` times) to find its saturation throughput.

Reported per node count and query kind: P50, P95, P99, achieved throughput and errors at each
offered rate, the throughput at saturation, and every figure as a ratio to the floor. With
``--ingress direct`` the cluster runs Serve's direct ingress: the product's Ingress replica and
the floor's each serve HTTP on a port of their own, neither behind the proxy.

    python -m bench.serve_load --photos /path/to/photos --index-count 200 --wait-quiet 1.0
    neardup bench serve --nodes 1 --code-rates 2 --image-rates 1 --seconds 2   # a smoke run

The JSON (machine, date, git revision, parameters, notes, every step) and a plot go to
bench/results/serve_load_DATE[_TAG].json and .png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx

from bench.common import write_json
from bench.cpu_share import CpuShare, tree_percent, wait_drained
from bench.open_loop import client_bound, run_step
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
    ap.add_argument("--ingress", choices=["proxy", "direct"], default="proxy",
                    help="HTTP through Serve's proxy, or Serve's direct ingress for product and floor alike")
    add_run_args(ap)
    ap.add_argument("--render", metavar="JSON", help="only recompute the summaries and the plot of a result")
    args = ap.parse_args(argv)
    args.nodes = [int(x) for x in str(args.nodes).split(",") if x.strip()]
    if not args.nodes or min(args.nodes) < 1:
        ap.error("--nodes needs positive counts")
    return args


def _bodies(images: list[bytes], codes: list[str]) -> dict[str, list[dict]]:
    """The request bodies of each query kind, as httpx ``post`` keyword arguments."""
    return {"code": [{"json": {"code": c, "k": 10}} for c in codes],
            "image": [{"files": {"file": ("q.jpg", b, "image/jpeg")}, "data": {"k": "10"}} for b in images]}


def _paths(prefix: str, floor_url: str) -> dict[str, str]:
    """Each target's path from the product's URL; the floor's is an absolute URL (it answers on
    a port of its own with direct ingress)."""
    return {"product": "/v1/search", "floor": f"{floor_url}{prefix}/v1/search"}


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
    """Per target: the highest rate it kept up with (``sustained_per_s``, the achieved throughput
    of its best unsaturated step: a lower bound of its capacity) and the first rate it did not
    (``overloaded_at_per_s``, with what it achieved there, ``overloaded_per_s``: past capacity
    an open-loop queue only grows, so that is at most its capacity); its capacity lies between
    the two rates. ``ratio``: the product's figures over the floor's."""
    out: dict = {}
    for target in TARGETS:
        steps = [(r["rate"], r[target]) for r in rows if target in r]
        over = next(((rate, s) for rate, s in steps if s["saturated"]), None)
        out[target] = {"sustained_per_s": max((s["achieved_per_s"] for _, s in steps if not s["saturated"]),
                                              default=None),
                       "reached": over is not None, "overloaded_at_per_s": over[0] if over else None,
                       "overloaded_per_s": over[1]["achieved_per_s"] if over else None}
    out["ratio"] = {k: (round(out["product"][k] / out["floor"][k], 3) if out["product"][k] and out["floor"][k]
                        else None) for k in ("sustained_per_s", "overloaded_per_s")}
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
    with ServeStack(n, direct=args.ingress == "direct") as stack:
        indexed = stack.index(photos)
        codes = stack.codes_of(queries)
        prefix = deploy_floor(stack.shard_node_ids())
        paths = _paths(prefix, stack.floor_url)
        modes = {}
        try:
            for mode, bodies in _bodies(queries, codes).items():
                print(f" {mode}", flush=True)
                _warm_up(stack.url, paths, bodies)
                rows = sweep(stack.url, paths, bodies, args.code_rates if mode == "code" else args.image_rates, args)
                modes[mode] = {"steps": rows, "saturation": saturation(rows), "light_load": light_load(rows)}
        finally:
            delete_floor()
        ingress = httpx.get(f"{stack.url}/v1/status", timeout=30).json().get("ingress")
        return {"nodes": n, "ingress": ingress, "indexed_images": indexed, "timings_s": stack.timings_s,
                "modes": modes}


def run(args: argparse.Namespace) -> dict:
    """Measure every node count -> the result document."""
    begin = start_run("serve_load", args)
    configs = [measure_nodes(n, begin.photos, begin.queries, args) for n in args.nodes]
    return {**begin.header, "method": __doc__.split("\n\n")[1].replace("\n", " "), "configs": configs}


def plot(result: dict, path: Path) -> None:
    """P99 and achieved throughput against the offered rate, by code (top) and by image (bottom):
    one colour per node count, the product solid and the floor dashed."""
    import matplotlib
    import matplotlib.ticker
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
        for ax in axes[row]:  # log-log: the dotted diagonal is "achieved = offered"
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
                axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("offered requests/s (open loop)")
        lim = max([s["rate"] for c in result["configs"] for s in c["modes"].get(mode, {}).get("steps", [])] or [1])
        low = min([s["rate"] for c in result["configs"] for s in c["modes"].get(mode, {}).get("steps", [])] or [1])
        axes[row][1].plot([low, lim], [low, lim], ":", color="grey", lw=1)
    axes[0][0].legend(fontsize=7)
    git = result["machine"]["git"]
    fig.suptitle(f"neardup serve vs bare Serve fan-out (dashed), {result['machine']['cores']} cores, "
                 f"{result['date'][:10]}, {(git['commit'] or '?')[:8]}{'+dirty' if git['dirty'] else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(path: Path) -> None:
    """Recompute each step's client_bound and each query kind's summaries from the stored
    figures, rewrite the JSON and the plot."""
    doc = json.loads(path.read_text())
    for cfg in doc["configs"]:
        for mode in cfg["modes"].values():
            for step in (r[t] for r in mode["steps"] for t in TARGETS if t in r):
                step["client_bound"] = client_bound(step["late_sends"], step["sent"])
            mode.update(saturation=saturation(mode["steps"]), light_load=light_load(mode["steps"]))
    write_json(path, doc)
    plot(doc, path.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        render(Path(args.render))
        return 0
    out = finish_run("serve_load", args, run(args))
    plot(json.loads(out.read_text()), out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
