"""E4: inference time of the Soft MoE layers when only k experts run (docs/study.md §5 E4; the
paper's table 3): the latency table (softmoe latency writes it whole), its figure, claim c2 on
the paper-sized wide layer and c2_gpu on a GPU, and the trained models' timings as an observation."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from softmoe.experiments import plots
from softmoe.study import paper
from softmoe.study.stats import k_for
from softmoe.study.layout import WIDE
from softmoe.statistics import verdicts
from softmoe.experiments.unit import (Claim, Evidence, Experiment, Figure as FigureSpec, Observation, Table,
                                      schema)

TIME_SLACK = 0.10        # (c2) margin: the paper's k = n/4 time ratio + 0.10
TIME_TOLERANCE = 0.05    # (observation) a larger k may not be faster than a smaller k by more than 5 %
TIME_REASON = ("the paper's saving at k = n/4 (0.46 / 0.52 of the full time at batch 1 / 100, one RTX 2080 Ti) "
               "with 0.10 for other hardware: a ratio clearly under that margin is a saving of the paper's kind")
E4_FRACTION = 0.25

LATENCY_COLUMNS = schema("config n k k_frac batch device median_ms q25_ms q75_ms repeats ratio ideal flops flop_ratio",
                         "n k k_frac batch median_ms q25_ms q75_ms repeats ratio ideal flops flop_ratio",
                         "config n k batch median_ms")
# One row per timed call: the calls of one round ran side by side (softmoe.bench.timing.time_rounds), so
# each round's ratio to its own k = n call is one paired sample of the time ratio (claim c2's
# order-statistic interval on the median ratio).
LATENCY_ROUNDS_COLUMNS = schema("config n k batch round ms ratio_to_full", "n k batch round ms ratio_to_full",
                                "config n k batch round ms ratio_to_full")


def _fig5(latency: pd.DataFrame | None) -> Figure | str:
    if latency is None or latency.empty:
        return "latency.csv missing or empty (latency step not run)"
    ref = paper.e4_latency()
    batches = sorted(set(latency["batch"]))
    configs = sorted({(c, int(n)) for c, n in zip(latency["config"], latency["n"])},
                     key=lambda cn: (cn[0].startswith(WIDE), cn[1], cn[0]))    # legend in numeric order
    colours = dict(zip(configs, plots.palette("deep" if len(configs) <= 10 else "husl", len(configs))))
    fig, axes = plots.panels(len(batches), sharey=True)
    for ax, batch in zip(axes, batches):
        ideal = np.linspace(1 / 16, 1, 50)
        ax.plot(ideal, ideal, color="0.5", ls="--", lw=1, label="ideal k/n")
        groups = dict(list(latency[latency["batch"] == batch].sort_values("k").groupby(["config", "n"])))
        for config, n in configs:
            if (config, n) not in groups:
                continue
            b = groups[(config, n)]
            scale = b["ratio"] / b["median_ms"]  # ratio to k = n, as latency.csv states it
            err = [(b["median_ms"] - b["q25_ms"]) * scale, (b["q75_ms"] - b["median_ms"]) * scale]
            ax.errorbar(b["k_frac"], b["ratio"], yerr=np.abs(np.nan_to_num(err)), marker="o", ms=4, capsize=2,
                        color=colours[(config, int(n))], label=f"{config} (n={int(n)})")
        paper_b = ref[ref["batch"] == batch]
        ax.scatter(paper_b["k_frac"], paper_b["ratio"], marker="D", facecolors="none", edgecolors="black",
                   s=50, zorder=5, label="paper (ViT-B, n=8, RTX 2080 Ti)")
        ax.set_yscale("log")
        ax.set(title=f"batch {int(batch)}", xlabel="k/n", ylabel="time / time at k = n (log)", xlim=(0, 1.05))
    handles = {}
    for ax in axes:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=3, fontsize="small")
    return fig


def _time_falls(g: pd.DataFrame, ratio: str = "ratio") -> bool | None:
    """Whether time falls with k in one (config, batch); None with a single k."""
    ms = g.sort_values("k")[ratio].to_numpy()
    if len(ms) < 2:
        return None
    return bool(ms[0] < ms[-1] and np.all(ms[1:] >= ms[:-1] * (1 - TIME_TOLERANCE)))


def _quarter_ratios(rows: pd.DataFrame) -> dict[int, float]:
    """batch -> time ratio at k = n/4 (to k = n)."""
    out = {}
    for batch, g in rows.groupby("batch"):
        n = int(g["n"].iloc[0])
        quarter = g[g["k"] == k_for(n, E4_FRACTION)]
        if len(quarter):
            out[int(batch)] = float(quarter["ratio"].iloc[0])
    return out


def _full_row(rows: pd.DataFrame, batch: int, n: int) -> pd.Series | None:
    """The k = n row of one configuration and batch (the selective path's, else the dense one's)."""
    same = rows[(rows["batch"] == batch) & (rows["k"] == n)]
    if "path" in same and (same["path"] == "selective").any():
        same = same[same["path"] == "selective"]
    return same.iloc[0] if len(same) else None


def _time_claim(key: str, scope: dict, rows: pd.DataFrame | None, what: str, scale: dict,
                rounds: pd.DataFrame | None = None) -> Claim:
    """(c2) on one configuration: the time ratio at k = n/4 (to k = n) below the paper's ratio +
    TIME_SLACK at every batch size, with intervals from the timing repeats (verdicts.ratio_test;
    per-round ratios from `rounds`, latency_rounds.csv, when recorded)."""
    paper_ratio = paper.e4_latency().query("k_frac == @E4_FRACTION").set_index("batch")["ratio"]
    claim = Claim(key, f"running only the k = n/4 kept experts saves inference time like the paper's "
                  f"(0.46 / 0.52 of full time at batch 1 / 100): {what}", scope, "c",
                  f"time ratio at k = n/4 < the paper's + {TIME_SLACK:g} at every batch size", TIME_REASON,
                  scale=scale)
    claim.paper = ", ".join(f"batch {b}: {r:.2f}" for b, r in paper_ratio.items())
    if rows is None or rows.empty:
        return claim
    found = []
    for batch, g in rows.groupby("batch"):
        n = int(g["n"].iloc[0])
        quarter, full = g[g["k"] == k_for(n, E4_FRACTION)], _full_row(g, batch, n)
        if len(quarter) and full is not None:
            found.append((int(batch), quarter.iloc[0], full))
    tests = [verdicts.ratio_test(f"batch {b}", row, full, float(paper_ratio.get(b, 0.5)) + TIME_SLACK, len(found),
                                 verdicts.round_ratios(rounds, row["config"], int(row["n"]), int(row["k"]), b))
             for b, row, full in found]
    claim.ours = ", ".join(f"batch {b}: {t.effect:.2f}" for (b, _, _), t in zip(found, tests)) or "–"
    claim.numbers = {f"ratio_b{b}": round(t.effect, 4) for (b, _, _), t in zip(found, tests)}
    falls = [f for _, g in rows.groupby("batch") if (f := _time_falls(g)) is not None]
    if falls:
        claim.evidence = f"observation: time falls with k in {sum(falls)} of {len(falls)} batch sizes"
    return verdicts.decide(claim, tests, "no k = n/4 and k = n rows at a common batch size")


def claim_time_wide(latency: pd.DataFrame | None, width: float = 1.0, rounds: pd.DataFrame | None = None) -> Claim:
    """(c2) the paper-sized wide layer (latency config "wide", at width `width` of the paper's;
    rounds: latency_rounds.csv when the latency step wrote it)."""
    rows = None if latency is None else latency[latency["config"] == WIDE]
    device = ", ".join(sorted(set(rows["device"]))) if rows is not None and len(rows) else "–"
    model = f"the paper's table-3 layer (n = 8 wide experts) at width ×{width:g}, random weights"
    claim = _time_claim("c2", {"dataset": "random inputs", "device": device, "model": model}, rows,
                        "the paper-sized wide layer", verdicts.latency_scale(width, device, model), rounds)
    if rows is None or rows.empty:
        claim = verdicts.not_run(claim, "no 'wide' rows in latency.csv (latency step not run)")
    return claim


def observe_time_trained(latency: pd.DataFrame | None, scope: dict) -> Observation | None:
    """The trained MNIST models' timings: reported, not judged (dispatch dominates at this size)."""
    if latency is None or latency[latency["config"] != WIDE].empty:
        return None
    rows = latency[latency["config"] != WIDE]
    falls = [f for _, g in rows.groupby(["config", "n", "batch"]) if (f := _time_falls(g)) is not None]
    return Observation("e_trained", "running fewer experts on the trained models",
                       dict(scope, device=", ".join(sorted(set(rows["device"])))),
                       f"time falls with k in {sum(falls)} of {len(falls)} (model, batch size)",
                       "dispatch dominates at this size: the trained experts are tiny, so the time is the routing "
                       "and the calls, not the experts; the paper made its speed claim on large layers (table 3), "
                       "judged by c2", {"falls": sum(falls), "cases": len(falls)})


def gpu_selective(gpu: dict | None) -> pd.DataFrame | None:
    """The wide-layer rows (selective path at every k, dense at k = n) on cuda in a GPU benchmark
    file (reports/benchmarks-gpu.json)."""
    if not gpu:
        return None
    rows = pd.DataFrame([r for r in gpu.get("selective", []) if str(r.get("config", "")).startswith(WIDE)
                         and r.get("path", "selective") in ("selective", "dense") and r.get("device") == "cuda"])
    if rows.empty or not (rows.get("path", pd.Series("selective", index=rows.index)) == "selective").any():
        return None
    return rows


def claim_time_gpu(gpu: dict | None) -> Claim:
    """(c2_gpu) c2 on a GPU, from reports/benchmarks-gpu.json, when it measured today's code."""
    machine = (gpu or {}).get("machine", {}).get("device_name", {}).get("cuda", "–")
    rows = gpu_selective(gpu)
    full = rows is not None and rows["config"].astype(str).str.endswith("full").any()
    model = "the paper's table-3 layer, random weights (benchmark suite)"
    device = f"cuda ({machine})" if rows is not None else "cuda"
    scope = {"dataset": "random inputs", "device": device, "model": model}
    stale = verdicts.stale(gpu) if rows is not None else None
    claim = _time_claim("c2_gpu", scope, None if stale else rows, "on a GPU",
                        verdicts.latency_scale(1.0 if full else 0.0, device, model))
    if rows is None:
        claim.evidence = "not measured on GPU (no reports/benchmarks-gpu.json; benchmarks/gpu-keep.sh writes it)"
        return verdicts.not_run(claim, claim.evidence)
    claim.evidence = f"from reports/benchmarks-gpu.json ({gpu.get('created', '–')})"
    if stale:
        return verdicts.not_run(claim, stale)
    return claim


# ---- (f) the budget --------------------------------------------------------------------------


LATENCY = Table("latency", LATENCY_COLUMNS, step="latency")
LATENCY_ROUNDS = Table("latency_rounds", LATENCY_ROUNDS_COLUMNS, step="latency")
EXPERIMENT = Experiment(
    key="E4", title="Inference time with k experts", paper="table 3",
    tables=(LATENCY, LATENCY_ROUNDS),
    figures=(FigureSpec(
        "fig5_latency", "Inference time of the selective path",
        "Median time of the Soft MoE layers with only k experts running, divided by the time "
        "with all n (error bars: quartiles), against k/n, one line per configuration, one panel "
        "per batch size; dashed: the ideal k/n; hollow diamonds: the paper's ratios (table 3).",
        (LATENCY.name,), lambda ev: _fig5(ev.frames[LATENCY.name])),),
    claims=(lambda ev: claim_time_wide(ev.frames[LATENCY.name], ev.study.latency.wide.width,
                                       ev.frames.get(LATENCY_ROUNDS.name)),
            lambda ev: claim_time_gpu(ev.gpu),
            lambda ev: observe_time_trained(ev.frames[LATENCY.name], ev.scope)),
)
