"""E4: inference time of the Soft MoE layers when only k experts run (docs/study.md §5 E4; the
paper's table 3): the latency table (softmoe latency writes it whole), its figure and claim e on
the paper-like wide layer, on the trained models and on a GPU."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from softmoe import paper, plots
from softmoe.discrepancies import WIDE
from softmoe.experiments.unit import (Claim, Evidence, Experiment, Figure as FigureSpec, Table, schema,
                                      scope, verdict)

TIME_SLACK = 0.10        # (e) our k = n/4 time ratio may exceed the paper's by this much
TIME_TOLERANCE = 0.05    # (e) a larger k may not be faster than a smaller k by more than 5 %
E4_FRACTION = 0.25

LATENCY = schema("config n k k_frac batch device median_ms q25_ms q75_ms repeats ratio ideal flops flop_ratio",
                 "n k k_frac batch median_ms q25_ms q75_ms repeats ratio ideal flops flop_ratio",
                 "config n k batch median_ms")


def _fig5(latency: pd.DataFrame | None) -> Figure | str:
    if latency is None or latency.empty:
        return "latency.csv missing or empty (latency step not run)"
    ref = paper.e4_latency()
    batches = sorted(set(latency["batch"]))
    configs = sorted({(c, int(n)) for c, n in zip(latency["config"], latency["n"])},
                     key=lambda cn: (cn[0].startswith("wide"), cn[1], cn[0]))    # legend in numeric order
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
        quarter = g[g["k"] == max(1, round(n * E4_FRACTION))]
        if len(quarter):
            out[int(batch)] = float(quarter["ratio"].iloc[0])
    return out


def _time_claim(key: str, scope: dict, rows: pd.DataFrame | None, what: str) -> Claim:
    """(e) on one configuration: time at k = n/4 at most the paper's ratio + TIME_SLACK at every
    batch size, and time falling with k."""
    paper_ratio = paper.e4_latency().query("k_frac == @E4_FRACTION").set_index("batch")["ratio"]
    claim = Claim(key, f"running only the k = n/4 kept experts cuts inference time like the paper's "
                  f"(0.46 / 0.52 of full time at batch 1 / 100): {what}", scope,
                  f"time ratio at k = n/4 ≤ paper's + {TIME_SLACK:g} at every batch size, and time falls with k",
                  "the paper measured one GPU (RTX 2080 Ti); timings on other hardware differ by the "
                  "quartile spread and more")
    claim.paper = ", ".join(f"batch {b}: {r:.2f}" for b, r in paper_ratio.items())
    if rows is None or rows.empty:
        return claim
    ok, parts = [], []
    for batch, ratio in _quarter_ratios(rows).items():
        ok.append(ratio <= paper_ratio.get(batch, 0.5) + TIME_SLACK)
        parts.append(f"batch {batch}: {ratio:.2f}")
        claim.numbers[f"ratio_b{batch}"] = round(ratio, 4)
    falls = [_time_falls(g) for _, g in rows.groupby("batch")]
    ok += [f for f in falls if f is not None]
    claim.ours = ", ".join(parts) or "–"
    claim.verdict = verdict(ok)
    return claim


def claim_time_wide(latency: pd.DataFrame | None) -> Claim:
    rows = None if latency is None else latency[latency["config"] == WIDE]
    device = ", ".join(sorted(set(rows["device"]))) if rows is not None and len(rows) else "–"
    claim = _time_claim("e_wide", {"dataset": "random inputs", "device": device,
                                   "model": "the paper's table-3 layer (n = 8 wide experts), random weights"},
                        rows, "the paper-like wide layer")
    if rows is None or rows.empty:
        claim.evidence = "no 'wide' rows in latency.csv (latency step not run)"
    return claim


def claim_time_trained(latency: pd.DataFrame | None, scope: dict) -> Claim:
    claim = Claim("e_trained", "running fewer experts makes the trained models faster", dict(scope, device="cpu"),
                  "time falls with k in every (model, batch size)",
                  "the paper could not study savings on its accuracy models; our trained experts are tiny")
    claim.paper = "not measured by the paper"
    if latency is None or latency[latency["config"] != WIDE].empty:
        claim.evidence = "no trained-model rows in latency.csv"
        return claim
    rows = latency[latency["config"] != WIDE]
    claim.scope["device"] = ", ".join(sorted(set(rows["device"])))
    falls = [f for _, g in rows.groupby(["config", "n", "batch"]) if (f := _time_falls(g)) is not None]
    claim.ours = f"time falls with k in {sum(falls)} of {len(falls)} (model, batch size)"
    claim.numbers = {"falls": sum(falls), "cases": len(falls)}
    claim.verdict = verdict([all(falls)] if falls else [])
    return claim


def gpu_selective(gpu: dict | None) -> pd.DataFrame | None:
    """The wide-layer rows of the keep path in a GPU benchmark file (reports/benchmarks-gpu.json)."""
    if not gpu:
        return None
    rows = pd.DataFrame([r for r in gpu.get("selective", []) if str(r.get("config", "")).startswith("wide")
                         and r.get("path", "selective") == "selective" and r.get("device") == "cuda"])
    return rows if not rows.empty else None


def claim_time_gpu(gpu: dict | None) -> Claim:
    machine = (gpu or {}).get("machine", {}).get("device_name", {}).get("cuda", "–")
    rows = gpu_selective(gpu)
    claim = _time_claim("e_gpu", {"dataset": "random inputs", "device": f"cuda ({machine})",
                                  "model": "the paper's table-3 layer, random weights (benchmark suite)"},
                        rows, "on a GPU")
    if rows is None:
        claim.scope["device"] = "cuda"
        claim.evidence = "not measured on GPU (no reports/benchmarks-gpu.json; benchmarks/gpu.sh writes it)"
    else:
        claim.evidence = f"from reports/benchmarks-gpu.json ({gpu.get('created', '–')})"
    return claim


# ---- (f) the budget --------------------------------------------------------------------------


EXPERIMENT = Experiment(
    key="E4", title="Inference time with k experts", paper="table 3",
    tables=(Table("latency", LATENCY, step="latency"),),
    figures=(FigureSpec(
        "fig5_latency", "Inference time of the selective path",
        "Median time of the Soft MoE layers with only k experts running, divided by the time "
        "with all n (error bars: quartiles), against k/n, one line per configuration, one panel "
        "per batch size; dashed: the ideal k/n; hollow diamonds: the paper's ratios (table 3).",
        ("latency",), lambda ev: _fig5(ev.frames["latency"])),),
    claims=(lambda ev: claim_time_wide(ev.frames["latency"]),
            lambda ev: claim_time_trained(ev.frames["latency"], scope(ev)),
            lambda ev: claim_time_gpu(ev.gpu)),
)
