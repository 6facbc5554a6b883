"""What a shard benchmark result document becomes for people: a PNG plot and a Markdown table,
and re-rendering both (with merged runs) from result JSONs already on disk.

Both are drawn from the JSON alone, so a killed run or a run measured on another machine can be
plotted and tabulated again without measuring anything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.shard_config import TARGET_N, TARGETS, BenchConfig, BenchError, label_of, table_name
from bench.shard_fits import analyse, default_label

# ----------------------------------------------------------------------------------------------
# plot
# ----------------------------------------------------------------------------------------------

_PANELS = (("p50_ms", "P99 single-query latency (ms)", lambda r: r["latency"]["p99_ms"]),
           ("memory_bytes", "bytes per code (index.memory_bytes / n)",
            lambda r: r["memory"]["bytes_per_code"]),
           (None, "recall@10, duplicates <= 16 bits", lambda r: r[f"recall_at_{r['k']}"].get("<=16")))


def _representatives(doc: dict) -> dict[str, str]:
    """One label per kind for the plot: the config with the fewest/plainest params."""
    reps: dict[str, str] = {}
    for r in doc["results"]:
        reps.setdefault(r["kind"], r["label"])
    dl = default_label(doc)
    if dl:
        reps[doc["default_kind"]] = dl
    for r in doc["results"]:  # hnsw: prefer the design card's M=32, efSearch=128 when measured
        if r["kind"] == "hnsw" and r["params"].get("M") == 32 and r["params"].get("efSearch") == 128:
            reps["hnsw"] = r["label"]
    return reps


def _fit_line(fit: dict, metric: str, rows: list[dict], target_n: int) -> tuple[Any, list[float]]:
    """The dashed extrapolation of one panel's metric from the smallest size to target_n."""
    xs = np.geomspace(rows[0]["n"], target_n, 40)
    ys = [common.eval_cost_curve(fit, x) for x in xs]
    if metric == "memory_bytes":
        return xs, [y / x for x, y in zip(xs, ys)]
    # P99 = fitted P50 x the measured P99/P50 ratio at the largest size
    return xs, [y * rows[-1]["latency"]["p99_ms"] / rows[-1]["latency"]["p50_ms"] for y in ys]


def _draw_panel(ax: Any, doc: dict, reps: dict[str, str], fits: dict, panel: tuple) -> None:
    """One metric against n: measured points per kind, and its fitted extrapolation dashed."""
    metric, title, get = panel
    for i, (kind, label) in enumerate(sorted(reps.items())):
        rows = sorted((r for r in doc["results"] if r["label"] == label), key=lambda r: r["n"])
        color = f"C{i}"
        ax.plot([r["n"] for r in rows], [get(r) for r in rows], "o-", color=color,
                label=label + (" [default]" if kind == doc["default_kind"] else ""))
        fit = fits.get((label, metric)) if metric else None
        if fit and rows:
            ax.plot(*_fit_line(fit, metric, rows, doc["params"]["extrapolate_to"]), "--", color=color, alpha=0.6)
    ax.set_xscale("log")
    if metric:
        ax.set_yscale("log")
    ax.set_xlabel("codes in the shard (n); dashed = extrapolated fit")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def write_plot(doc: dict, path: Path) -> None:
    """Latency, memory and recall against size, one line per kind (dashed: extrapolated)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reps = _representatives(doc)
    fits = {(f["label"], f["metric"]): f for f in doc["fits"]}
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    for ax, panel in zip(axes, _PANELS):
        _draw_panel(ax, doc, reps, fits, panel)
    axes[0].axhline(TARGETS["p99_ms"], color="k", lw=0.8, ls=":")
    axes[1].axhline(TARGETS["bytes_per_code"], color="k", lw=0.8, ls=":")
    axes[2].axhline(TARGETS["recall_at_10_le16"], color="k", lw=0.8, ls=":")
    axes[2].set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    m = doc["machine"]
    fig.suptitle(f"neardup shard bench ({doc['tag']}, {m['date'][:10]}, {m['cpu_model']}, {m['cores']} cores, "
                 f"git {str(m['git']['commit'])[:8]}); dotted = target", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Markdown table
# ----------------------------------------------------------------------------------------------

def _kilo(rate: float) -> str:
    """Codes/s as thousands: 2 significant digits below 10k (2,213 -> '2.2'), else whole."""
    return f"{rate / 1e3:.1f}" if rate < 10_000 else f"{rate / 1e3:,.0f}"


def _f(x: Any, fmt: str, dash: str = "—") -> str:
    return dash if x is None else format(x, fmt)


def _largest(doc: dict) -> dict[str, dict]:
    """Each configuration's result at its largest measured size."""
    largest: dict[str, dict] = {}
    for r in doc["results"]:
        if r["label"] not in largest or r["n"] > largest[r["label"]]["n"]:
            largest[r["label"]] = r
    return largest


def _intro(doc: dict) -> str:
    """The sentence above the table: machine, code version, workload, merges, background load."""
    m = doc["machine"]
    busy = any(r["other_load"] for r in doc["results"])
    source = ("uniform random codes with planted duplicates" if doc["results"][0]["query_source"] == "planted"
              else "real codes in random background codes")
    return (f"Shard index benchmark, {m['date'][:10]}: {m['cpu_model']} ({m['cores']} cores, {m['ram_gb']} GB), "
            f"faiss {m['faiss']}, git {str(m['git']['commit'])[:8]}; {doc['params']['bits']}-bit {source}."
            + "".join(f" Merged from {mg['file']} (git {str(mg['machine']['git']['commit'])[:8]}, "
                      f"{mg['machine']['date'][:10]}): {mg['results']} results"
                      + (f", replacing {mg['replaced']} earlier measurements" if mg.get("replaced") else "")
                      + "." for mg in doc.get("merged", []) if mg.get("machine"))
            + (" Other processes were using the CPU during some measurements (see load_avg_1m in the "
               "JSON): tail latencies are noisy." if busy else ""))


def _header(doc: dict, k: int, nt: str, shards: int) -> list[str]:
    """The column explanation and the table's header rows."""
    return [f"Columns marked *measured* are at the size in the n column (the largest measured for that "
            f"configuration); *extrapolated* columns come from cost curves fitted over the measured sizes, "
            f"to {nt} codes per node and {common.format_count(doc['params']['extrapolate_to'] * shards)} codes "
            f"over {shards} shards (P99 of the slowest shard, excluding network, encode and merge).", "",
            f"| kind | params | n | recall@{k}, dup ≤16 bits | P50 / P99 ms | QPS (batch {doc['params']['batch_size']}) | "
            f"build k codes/s | bytes/code (RSS) | P50 / P99 ms at {nt} | GB at {nt} | "
            f"P99 ms, {shards}-shard fan-out |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            "| | | | *measured* | *measured* | *measured* | *measured* | *measured* | *extrapolated* | "
            "*extrapolated* | *extrapolated* |"]


def _table_rows(doc: dict, largest: dict[str, dict], dl: str | None) -> list[dict]:
    """Rows in table order: the default first (also at TARGET_N when measured there), then by kind."""
    rows = sorted(largest.values(), key=lambda r: (r["label"] != dl, r["kind"], str(sorted(r["params"].items()))))
    at_target = [r for r in doc["results"] if r["label"] == dl and r["n"] == TARGET_N]
    if at_target and rows and rows[0]["label"] == dl and rows[0]["n"] != TARGET_N:
        rows.insert(0, at_target[0])  # the default also at the size its targets are set for
    return rows


def _row(r: dict, e: dict, k: int, dl: str | None) -> str:
    """One configuration's table row: measured figures, then extrapolated ones (e)."""
    mark = " †" if e.get("low_confidence") else ""
    params = ", ".join(f"{a}={b}" for a, b in sorted(r["params"].items())) or "defaults"
    kind = f"**{r['kind']}** (default)" if r["label"] == dl else r["kind"]
    rss = r["memory"]["rss_bytes_per_code"]
    return (f"| {kind} | {params} | {common.format_count(r['n'])} | {_f(r[f'recall_at_{k}'].get('<=16'), '.3f')} | "
            f"{r['latency']['p50_ms']:.2f} / {r['latency']['p99_ms']:.2f} | {r['batched']['qps']:,.0f} | "
            f"{_kilo(r['build']['codes_per_s'])} | {r['memory']['bytes_per_code']:.0f} ({_f(rss, '.0f')}) | "
            f"{_f(e.get('p50_ms'), '.2f')} / {_f(e.get('p99_ms'), '.2f')}{mark} | "
            f"{_f(None if e.get('memory_bytes') is None else e['memory_bytes'] / 1e9, '.1f')}{mark} | "
            f"{_f(e.get('fanout', {}).get('p99_ms'), '.2f')}{mark} |")


def _skipped_note(doc: dict) -> list[str]:
    """Configurations not measured at some size, and why."""
    skipped = sorted({(label_of(s["kind"], s["build_params"]), s["n"], s["reason"]) for s in doc["skipped"]
                      if s["kind"] != "*" and not s["reason"].startswith("skipped at a smaller size")})
    if not skipped:
        return []
    return ["", "Not measured above n: " + "; ".join(
        f"{lab} at {common.format_count(n)} ({why})" for lab, n, why in skipped) + "."]


def _falling_note(doc: dict, largest: dict[str, dict], k: int, nt: str) -> list[str]:
    """Configurations whose recall drops between their smallest and largest size (not extrapolated)."""
    falling = []
    for label, r in largest.items():
        first = min((x for x in doc["results"] if x["label"] == label), key=lambda x: x["n"])
        a, b = first[f"recall_at_{k}"].get("<=16"), r[f"recall_at_{k}"].get("<=16")
        if a is not None and b is not None and a - b > 0.02:
            falling.append(f"{label} {a:.3f} at {common.format_count(first['n'])} → {b:.3f} at "
                           f"{common.format_count(r['n'])}")
    if not falling:
        return []
    return ["", "Recall falls as the shard grows (not extrapolated; expect lower at "
            f"{nt}): " + "; ".join(falling) + "."]


def _targets_note(doc: dict, k: int) -> list[str]:
    """The default kind's measured figures against each target."""
    summary = (doc.get("summary") or {}).get("default") or []
    if not summary:
        return []
    d = summary[0]
    ok = d["meets_target"]
    yes = lambda b: "met" if b else "**not met**"  # noqa: E731
    return ["", f"Targets for the default kind at {common.format_count(d['n'])}: recall@{k} ≥ "
            f"{TARGETS['recall_at_10_le16']} for duplicates ≤ 16 bits ({d['recall_at_10_le16']:.3f}: "
            f"{yes(ok['recall_at_10_le16'])}), P99 ≤ {TARGETS['p99_ms']} ms ({d['p99_ms']:.2f}: "
            f"{yes(ok['p99_ms'])}), ≤ {TARGETS['bytes_per_code']:.0f} bytes/code "
            f"({d['bytes_per_code']:.1f}: {yes(ok['bytes_per_code'])}), build ≥ "
            f"{TARGETS['build_codes_per_s'] // 1000}k codes/s ({d['build_codes_per_s'] / 1e3:,.0f}k: "
            f"{yes(ok['build_codes_per_s'])})."]


def markdown_table(doc: dict) -> str:
    """README-ready table: each config at its largest measured size, and extrapolated to
    ``extrapolate_to`` codes per node and ``fanout_shards`` shards."""
    if not doc["results"]:
        return ""
    k = doc["params"]["k"]
    nt = common.format_count(doc["params"]["extrapolate_to"])
    shards = doc["params"]["fanout_shards"]
    extra = {e["label"]: e for e in doc["extrapolated"]}
    dl = default_label(doc)
    largest = _largest(doc)
    lines = [_intro(doc), "", *_header(doc, k, nt, shards)]
    lines += [_row(r, extra.get(r["label"], {}), k, dl) for r in _table_rows(doc, largest, dl)]
    lines += _skipped_note(doc) + _falling_note(doc, largest, k, nt)
    if any(e.get("low_confidence") for e in extra.values()):
        lines += ["", "† fitted on fewer than 3 sizes: the model theory expects (hnsw: log n per query; others: "
                  "linear), low confidence."]
    lines += ["", f"P99 at {nt} = fitted P50 × the P99/P50 ratio measured at the largest size; the fan-out "
              f"column is the P99 of the slowest of {shards} shards, simulated by drawing from that scaled "
              f"distribution. QPS uses all cores; single-query latency uses one FAISS thread."]
    return "\n".join(lines + _targets_note(doc, k)) + "\n"


# ----------------------------------------------------------------------------------------------
# re-rendering a result JSON
# ----------------------------------------------------------------------------------------------

def _read_doc(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"cannot read results {path}: {exc}") from None


def _merge(doc: dict, others: list[str]) -> None:
    """Fold other runs' results into doc: a merged result replaces doc's for the same configuration
    and size and records the file it came from; doc["merged"] counts what each file brought."""
    merged = {m["file"]: m for m in doc.get("merged", [])}
    for other in others:
        extra, name = _read_doc(Path(other)), Path(other).name
        new = {(r["label"], r["n"]): {**r, "merged_from": name} for r in extra["results"]}
        replaced = sum(1 for r in doc["results"]
                       if (r["label"], r["n"]) in new and r.get("merged_from") != name)
        doc["results"] = [r for r in doc["results"] if (r["label"], r["n"]) not in new] + list(new.values())
        merged[name] = {"file": name, "results": len(new), "machine": extra.get("machine"),
                        "replaced": replaced + merged.get(name, {}).get("replaced", 0)}
    if merged:
        doc["merged"] = list(merged.values())


def render(json_path: str, merge: list[str] | None = None) -> int:
    """Re-fit, re-plot and re-tabulate an existing result JSON (e.g. after a killed run).

    ``merge``: result JSONs of other runs (e.g. one large size run alone, or a re-measurement
    of one kind after a code change) whose measurements join this document's before fitting.
    """
    p = Path(json_path)
    doc = _read_doc(p)
    _merge(doc, merge or [])
    cfg = BenchConfig(**doc["params"])
    analyse(doc, cfg)
    common.write_json(p, doc)
    write_plot(doc, p.with_suffix(".png"))
    table = markdown_table(doc)
    (p.parent / table_name(cfg.date, cfg.tag, p.stem)).write_text(table)
    print(table, flush=True)
    return 0
