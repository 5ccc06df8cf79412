"""Every figure of the study, drawn from the tidy tables of results/tables/<dataset>/ only
(read through softmoe.tables). Drawing only: the analyses are softmoe.stats's and
softmoe.discrepancies'.

Each figure is written as <stem>.png and <stem>.svg under the output folder, always under the
same names: a figure whose table is missing or empty is drawn as a panel that says "not run"
and why, so the workflow's outputs stay fixed."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from softmoe import atomic, paper, tables
from softmoe.params import Evaluate, Synthetic
from softmoe.discrepancies import oracle_rows
from softmoe.stats import at_fraction, constant_predictor_loss, frac_label, mean_over_seeds

# stem -> (title, caption); the report and workflow/report/<stem>.rst use the same words.
FIGURES = {
    "fig1_selection_vs_fraction": (
        "Accuracy vs proportion of experts kept (Algorithm 1)",
        "Test accuracy when each input runs only the k experts chosen by Algorithm 1, against "
        "k/n, one curve per n (paper figure 1; mean over training seeds, band = 95 % interval); "
        "k/n = 1 is the all-experts model; crosses: the paper's MNIST points (±0.003). Left: the "
        "paper's Algorithm 1 (combine weights not renormalized); right: the renormalized ablation."),
    "fig2_selection_vs_n": (
        "Accuracy vs number of experts at a fixed parameter budget",
        "Algorithm 1 (solid, error bars = 95 % interval over training seeds and test images) against "
        "a random k-subset per input (dashed, band = ±1 std over the random seeds) and all experts "
        "(gray), one colour per k = n·fraction (paper figure 2; x / +: the paper's MNIST Algorithm 1 "
        "and random points). Left: the paper's Algorithm 1; right: the renormalized ablation."),
    "fig3_synthetic_loss": (
        "Synthetic ‖x‖₂ regression: training loss",
        "MSE training loss (log scale) of the Soft MoE regressor of ‖x‖₂, one line per "
        "expert count n, one panel per data variance (both readings of the paper's N(0, 5I)) and "
        "tokenization (tokens x dim); dotted: the paper's plateaus (read off its plot, ±0.3); "
        "dash-dot: the loss of the best constant prediction, Var‖x‖₂. Theorem 1: a single expert "
        "cannot fit the target."),
    "fig3_proof_check": (
        "Theorem 1's proof, numerically (n = 1)",
        "For the trained single-expert model and the input pairs (A, B) of the proof, the gap "
        "between their slot inputs (solid) vanishes while the gap of their norms (dashed) grows "
        "with the scale a: the model must give A and B nearly the same output."),
    "fig4_oracle": (
        "Oracle: best expert subset per input",
        "Left: share of test inputs some k-subset (k = n·oracle fraction) predicts correctly, "
        "against a random k-subset (±1 std) and the paper's table 1 (crosses). Right: distinct "
        "best subsets used over the test set, with the number of possible subsets C(n, k)."),
    "fig5_latency": (
        "Inference time of the selective path",
        "Median time of the Soft MoE layers with only k experts running, divided by the time "
        "with all n (error bars: quartiles), against k/n, one line per configuration, one panel "
        "per batch size; dashed: the ideal k/n; hollow diamonds: the paper's ratios (table 3)."),
    "fig6_training_curves": (
        "Training curves",
        "Test accuracy (logged only, never used to choose a checkpoint) and training loss "
        "against the optimizer step, one line per n (per seed)."),
    "fig6_all_experts_vs_n": (
        "All-experts accuracy vs number of experts",
        "Test accuracy of the full model (k = n) against n at a fixed expert parameter budget: "
        "does the budget hold accuracy as the experts get narrower? Crosses: the paper."),
}
PANEL = (5.4, 3.9)
VARIANTS = {False: "Algorithm 1 (paper)", True: "Algorithm 1, renormalized"}


def make_figures(dataset: str, evaluate: Evaluate, synthetic: Synthetic, tables_dir: Path, out_dir: Path) -> None:
    """Draw every figure of FIGURES from the tables of a run on `dataset` into out_dir (PNG and SVG)."""
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    frames = {name: tables.read(tables_dir, name) for name in tables.SCHEMAS}
    reference = paper.REFERENCE.get(dataset)
    drawers = {
        "fig1_selection_vs_fraction": lambda: _fig1(frames["selection"], reference),
        "fig2_selection_vs_n": lambda: _fig2(frames["selection"], evaluate.fractions, reference),
        "fig3_synthetic_loss": lambda: _fig3_loss(frames["synthetic_loss"], synthetic.tokenizations),
        "fig3_proof_check": lambda: _fig3_proof(frames["synthetic_proof"], synthetic.tokenizations),
        "fig4_oracle": lambda: _fig4(frames["selection"], evaluate.oracle_limit, reference),
        "fig5_latency": lambda: _fig5(frames["latency"]),
        "fig6_training_curves": lambda: _fig6_curves(frames["curves"]),
        "fig6_all_experts_vs_n": lambda: _fig6_all(frames["training"], dataset),
    }
    with matplotlib.rc_context(_style()):
        for stem, draw in drawers.items():
            fig = draw()
            if isinstance(fig, str):
                fig = _not_run(FIGURES[stem][0], fig)
            _save(fig, out_dir, stem)


def _style() -> dict:
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.8)}
    rc.update({"svg.hashsalt": "softmoe", "figure.dpi": 100})
    return rc


def _save(fig: Figure, out_dir: Path, stem: str) -> None:
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
        with atomic.atomic_path(out_dir / f"{stem}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=120, bbox_inches="tight", metadata=meta)


def _not_run(title: str, reason: str) -> Figure:
    fig = Figure(figsize=PANEL)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, f"NOT RUN\n{reason}", ha="center", va="center", wrap=True,
            transform=ax.transAxes, fontsize=10)
    return fig


def _panels(count: int, cols: int | None = None, **kw) -> tuple[Figure, list]:
    cols = cols or count
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(PANEL[0] * cols, PANEL[1] * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, **kw)).ravel().tolist()
    for ax in axes[count:]:
        ax.set_axis_off()
    return fig, axes[:count]


def _n_palette(ns) -> dict:
    ns = sorted({int(n) for n in ns})
    return dict(zip(ns, sns.color_palette("viridis", len(ns))))


def _log2_axis(ax, ns) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({int(n) for n in ns}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.minorticks_off()


def _variants(selection: pd.DataFrame) -> list[bool]:
    return sorted(set(selection.loc[selection["method"] == "alg1", "renormalize"]))


def _paper_mnist(reference: str | None) -> pd.DataFrame | None:
    return paper.e3_mnist() if reference == "mnist" else None


def _fig1(selection: pd.DataFrame, reference: str | None) -> Figure | str:
    means = mean_over_seeds(selection)
    variants = _variants(means)
    if not variants:
        return "selection.csv has no Algorithm 1 rows"
    full = means[means["method"] == "all"].groupby("n", as_index=False)[["accuracy", "ci"]].mean()
    palette = _n_palette(means["n"])
    ref = _paper_mnist(reference)
    fig, axes = _panels(len(variants), sharey=True)
    for ax, renorm in zip(axes, variants):
        alg = means[(means["method"] == "alg1") & (means["renormalize"] == renorm)]
        for n, rows in sorted(alg.groupby("n"), key=lambda item: item[0]):
            rows = pd.concat([rows, full[full["n"] == n].assign(k_frac=1.0)]).sort_values("k_frac")
            ax.plot(rows["k_frac"], rows["accuracy"], color=palette[int(n)], label=f"n={int(n)}",
                    marker="." if len(rows) < 20 else None)
            ax.fill_between(rows["k_frac"], rows["accuracy"] - rows["ci"], rows["accuracy"] + rows["ci"],
                            color=palette[int(n)], alpha=0.15, lw=0)
            if ref is not None and not renorm:
                pts = ref[(ref["n"] == n) & (ref["method"] != "random")]
                ax.scatter(pts["k_frac"], pts["accuracy"], marker="x", color=palette[int(n)], s=30, zorder=5)
        ax.set(title=VARIANTS[renorm], xlabel="proportion of experts kept, k/n", ylabel="test accuracy",
               xlim=(0, 1.02))
    if ref is not None:
        axes[0].scatter([], [], marker="x", color="0.3", label="paper (MNIST, ±0.003)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(10, len(palette) + 1),
               fontsize="small")
    return fig


def _fig2(selection: pd.DataFrame, fractions: tuple[float, ...], reference: str | None) -> Figure | str:
    means = mean_over_seeds(selection)
    variants = _variants(means)
    if not variants:
        return "selection.csv has no Algorithm 1 rows"
    full = means[means["method"] == "all"].groupby("n", as_index=False)[["accuracy", "ci"]].mean()
    colours = dict(zip(sorted(fractions, reverse=True), sns.color_palette("deep", len(fractions))))
    ref = _paper_mnist(reference)
    fig, axes = _panels(len(variants), sharey=True)
    for ax, renorm in zip(axes, variants):
        rows = means[means["renormalize"] == renorm]
        ax.errorbar(full["n"], full["accuracy"], yerr=full["ci"], color="0.45", lw=2.5, marker="o", ms=5,
                    capsize=2, label="all experts (±95 %)")
        for frac, colour in colours.items():
            alg = at_fraction(rows[rows["method"] == "alg1"], frac).sort_values("n")
            rnd = at_fraction(rows[rows["method"] == "random"], frac).sort_values("n")
            ax.errorbar(alg["n"], alg["accuracy"], yerr=alg["ci"], color=colour, marker="o", ms=5, capsize=2,
                        label=f"Algorithm 1, k={frac_label(frac)} (±95 %)")
            ax.plot(rnd["n"], rnd["accuracy"], color=colour, ls="--", marker="s", ms=4,
                    label=f"random, k={frac_label(frac)} (±1 std)")
            std = rnd["std"].fillna(0)
            ax.fill_between(rnd["n"], rnd["accuracy"] - std, rnd["accuracy"] + std, color=colour, alpha=0.18, lw=0)
            if ref is not None and not renorm:
                for method, marker in (("alg1", "x"), ("random", "+")):
                    pts = ref[(ref["method"] == method) & ((ref["k_frac"] - frac).abs() < 1e-9)]
                    ax.scatter(pts["n"], pts["accuracy"], marker=marker, color=colour, s=40, zorder=5)
        if ref is not None and not renorm:
            pts = ref[ref["method"] == "all"]
            ax.scatter(pts["n"], pts["accuracy"], marker="x", color="0.45", s=40, zorder=5)
        _log2_axis(ax, means["n"])
        ax.set(title=VARIANTS[renorm], xlabel="number of experts n (fixed budget)", ylabel="test accuracy")
    if ref is not None:
        axes[0].scatter([], [], marker="x", color="0.3", label="paper Alg1 / all (MNIST)")
        axes[0].scatter([], [], marker="+", color="0.3", label="paper random (MNIST)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize="small")
    return fig


def _tokenizations(frame: pd.DataFrame, order: tuple[str, ...]) -> list[str]:
    """The tokenizations of a table, in the given order (params.synthetic.tokenizations)."""
    found = set(frame["tokens"])
    order = [t for t in order if t in found]
    return order + sorted(found - set(order))


def _fig3_loss(loss: pd.DataFrame | None, tokenizations: tuple[str, ...]) -> Figure | str:
    """One panel per (variance, tokenization): loss per n, the paper's plateaus (dotted) and the
    loss of the best constant prediction Var‖x‖₂ (dash-dot, what a single expert can reach)."""
    if loss is None or loss.empty:
        return "synthetic_loss.csv missing or empty (synthetic step not run)"
    toks = _tokenizations(loss, tokenizations)
    panels = [(v, t) for v in sorted(set(loss["variance"])) for t in toks]
    ref = paper.e1_plateaus()
    palette = _n_palette(set(loss["n"]) | set(ref["n"]))
    fig, axes = _panels(len(panels), cols=len(toks), sharey=True)
    for ax, (variance, tok) in zip(axes, panels):
        rows = loss[(loss["tokens"] == tok) & (loss["variance"] == variance)]
        for n, g in sorted(rows.groupby("n"), key=lambda item: item[0]):
            ax.plot(g["step"], g["loss"], color=palette[int(n)], label=f"n={int(n)}")
        for r in ref[ref["tokens"] == tok].itertuples():
            ax.axhline(r.loss, color=palette[int(r.n)], ls=":", lw=1.2)
        ax.axhline(constant_predictor_loss(variance), color="black", ls="-.", lw=1)
        ax.set_yscale("log")
        ax.set(title=f"variance {variance:g}, {tok} (tokens x dim)", xlabel="step", ylabel="MSE loss")
    axes[0].plot([], [], color="0.3", ls=":", label="paper plateau (±0.3)")
    axes[0].plot([], [], color="black", ls="-.", label="constant predictor Var‖x‖₂")
    axes[0].legend(fontsize="x-small")
    return fig


def _fig3_proof(proof: pd.DataFrame | None, tokenizations: tuple[str, ...]) -> Figure | str:
    if proof is None or proof.empty:
        return "synthetic_proof.csv missing or empty (proof step not run)"
    toks = _tokenizations(proof, tokenizations)
    colours = dict(zip(sorted(set(proof["case"])), sns.color_palette("deep")))
    positive = proof.loc[proof["slot_gap"] > 0, "slot_gap"]
    floor = positive.min() / 100 if len(positive) else 1e-16  # where exact zeros are drawn
    panels = [(v, t) for v in sorted(set(proof["variance"])) for t in toks]
    fig, axes = _panels(len(panels), cols=len(toks), sharey=True)
    for ax, (variance, tok) in zip(axes, panels):
        one = proof[(proof["tokens"] == tok) & (proof["variance"] == variance)]
        for case, rows in one.sort_values("a").groupby("case"):
            ax.plot(rows["a"], rows["slot_gap"].where(rows["slot_gap"] > 0, floor), color=colours[case],
                    marker="o", label=f"{case}: slot-input gap")
            ax.plot(rows["a"], rows["norm_gap"], color=colours[case], ls="--", marker="^",
                    label=f"{case}: norm gap")
        if (proof["slot_gap"] <= 0).any():
            ax.axhline(floor, color="0.5", ls=":", lw=1, label="slot gap exactly 0 (drawn here)")
        ax.set_xscale("log")
        ax.set_yscale("log", nonpositive="mask")
        ax.set(title=f"variance {variance:g}, {tok}, n = 1", xlabel="scale a of the input pair", ylabel="gap")
    axes[0].legend(fontsize="x-small")
    return fig


def _fig4(selection: pd.DataFrame, oracle_limit: int, reference: str | None) -> Figure | str:
    rows = oracle_rows(selection)
    if rows.empty:
        return ("selection.csv has no oracle rows: C(n, k) exceeds evaluate.oracle_limit "
                f"({oracle_limit}) for every n")
    ref = paper.e2_oracle() if reference == "mnist" else None
    fig, (acc, cnt) = _panels(2)
    acc.plot(rows["n"], rows["oracle"], marker="o", label="best k-subset (ours)")
    acc.errorbar(rows["n"], rows["random"], yerr=rows["random_std"].fillna(0), ls="--", marker="s",
                 capsize=3, label="random k-subset (ours)")
    cnt.plot(rows["n"], rows["distinct"], marker="o", label="distinct best subsets (ours)")
    cnt.plot(rows["n"], rows["possible"], color="0.5", ls=":", marker=".", label="possible subsets C(n, k)")
    if ref is not None:
        acc.scatter(ref["n"], ref["oracle"], marker="x", color="C0", s=50, label="best (paper, MNIST)")
        acc.scatter(ref["n"], ref["random"], marker="x", color="C1", s=50, label="random (paper, MNIST)")
        cnt.scatter(ref["n"], ref["distinct"], marker="x", color="C0", s=50, label="paper (MNIST)")
    for ax in (acc, cnt):
        _log2_axis(ax, list(rows["n"]) + ([] if ref is None else list(ref["n"])))
        ax.set_xlabel("number of experts n")
        ax.legend(fontsize="x-small")
    acc.set(title="accuracy at k = n·oracle fraction", ylabel="test accuracy")
    cnt.set_yscale("log")
    cnt.set(title="best subsets used", ylabel="count")
    return fig


def _fig5(latency: pd.DataFrame | None) -> Figure | str:
    if latency is None or latency.empty:
        return "latency.csv missing or empty (latency step not run)"
    ref = paper.e4_latency()
    batches = sorted(set(latency["batch"]))
    configs = sorted({(c, int(n)) for c, n in zip(latency["config"], latency["n"])},
                     key=lambda cn: (cn[0].startswith("wide"), cn[1], cn[0]))    # legend in numeric order
    colours = dict(zip(configs, sns.color_palette("deep" if len(configs) <= 10 else "husl", len(configs))))
    fig, axes = _panels(len(batches), sharey=True)
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


def _fig6_curves(curves: pd.DataFrame | None) -> Figure | str:
    if curves is None or curves.empty:
        return "curves.csv missing or empty"
    palette = _n_palette(curves["n"])
    fig, (acc, loss) = _panels(2)
    for (n, seed), rows in curves.sort_values("step").groupby(["n", "seed"]):
        label = f"n={int(n)}" if seed == curves["seed"].min() else None
        test = rows.dropna(subset=["test_accuracy"])
        train = rows.dropna(subset=["train_loss"])
        acc.plot(test["step"], test["test_accuracy"], color=palette[int(n)], label=label)
        loss.plot(train["step"], train["train_loss"], color=palette[int(n)], label=label)
    acc.set(title="test accuracy (logged, not used for selection)", xlabel="step", ylabel="accuracy")
    loss.set(title="training loss", xlabel="step", ylabel="cross-entropy")
    loss.set_yscale("log")
    acc.legend(fontsize="x-small", ncol=2, loc="lower right")
    return fig


def _fig6_all(training: pd.DataFrame, dataset: str) -> Figure:
    fig, (ax,) = _panels(1)
    means = training.groupby("n", as_index=False)["test_accuracy"].mean()
    ax.scatter(training["n"], training["test_accuracy"], color="C0", alpha=0.4, s=15, label="each seed")
    ax.plot(means["n"], means["test_accuracy"], color="C0", marker="o", label=f"ours ({dataset})")
    ns = list(means["n"])
    ref_name = paper.REFERENCE.get(dataset)
    if ref_name:
        ref = paper.headlines(ref_name)
        ref = ref[(ref["method"] == "all") & ref["n"].notna()]
        if not ref.empty:
            ax.scatter(ref["n"], ref["accuracy"], marker="x", color="C3", s=50, label=f"paper ({ref_name})")
            ns += list(ref["n"])
    _log2_axis(ax, ns)
    ax.set(title="all experts (k = n)", xlabel="number of experts n (fixed budget)", ylabel="test accuracy")
    ax.legend(fontsize="small")
    return fig
