"""Every figure of the study, drawn from the tidy tables of results/tables/<dataset>/ only.

Each figure is written as <stem>.png and <stem>.svg under the output folder, always under the
same names: a figure whose table is missing or empty is drawn as a panel that says "not run"
and why, so the workflow's outputs stay fixed. Reading and checking the tables lives here too,
because the report reads the same tables."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from softmoe import atomic, paper
from softmoe.errors import UserError

# table -> (columns, the numeric ones among them, the ones that may not be empty)
SCHEMAS = {
    "selection": (["dataset", "n", "seed", "k", "k_frac", "method", "renormalize", "accuracy",
                   "std", "z", "count"],
                  ["n", "seed", "k", "k_frac", "accuracy", "std", "z", "count"],
                  ["dataset", "n", "seed", "k", "method", "renormalize", "accuracy"]),
    "training": (["dataset", "n", "seed", "test_accuracy", "test_loss", "train_loss",
                  "params_total", "params_experts", "expert_hidden", "epochs", "steps",
                  "wall_time_s", "device", "threads"],
                 ["n", "seed", "test_accuracy", "test_loss", "train_loss", "params_total",
                  "params_experts", "expert_hidden", "epochs", "steps", "wall_time_s", "threads"],
                 ["dataset", "n", "seed", "test_accuracy"]),
    "curves": (["epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                "n", "seed"],
               ["epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                "n", "seed"],
               ["step", "n", "seed"]),
    "synthetic_loss": (["step", "loss", "tokens", "n"], ["step", "loss", "n"],
                       ["step", "loss", "tokens", "n"]),
    "synthetic_proof": (["case", "a", "slot_gap", "norm_gap", "abs_error_A", "abs_error_B",
                         "tokens"],
                        ["a", "slot_gap", "norm_gap", "abs_error_A", "abs_error_B"],
                        ["case", "a", "slot_gap", "norm_gap", "tokens"]),
    "latency": (["config", "n", "k", "k_frac", "batch", "device", "median_ms", "q25_ms",
                 "q75_ms", "repeats", "ratio", "ideal", "flops", "flop_ratio"],
                ["n", "k", "k_frac", "batch", "median_ms", "q25_ms", "q75_ms", "repeats",
                 "ratio", "ideal", "flops", "flop_ratio"],
                ["config", "n", "k", "batch", "median_ms"]),
}
REQUIRED = ("selection", "training")
METHODS = {"all", "alg1", "random", "oracle"}

# stem -> (title, caption); the report and workflow/report/<stem>.rst use the same words.
FIGURES = {
    "fig1_selection_vs_fraction": (
        "Accuracy vs proportion of experts kept (Algorithm 1)",
        "Test accuracy when each input runs only the k experts chosen by Algorithm 1, against "
        "k/n, one curve per n (paper figure 1); k/n = 1 is the all-experts model. Left: the "
        "paper's Algorithm 1 (combine weights not renormalized); right: the renormalized ablation."),
    "fig2_selection_vs_n": (
        "Accuracy vs number of experts at a fixed parameter budget",
        "Algorithm 1 (solid) against a random k-subset per input (dashed, band = ±1 std over the "
        "random seeds) and all experts (gray), one colour per k = n·fraction (paper figure 2). "
        "Left: the paper's Algorithm 1; right: the renormalized ablation."),
    "fig3_synthetic_loss": (
        "Synthetic ‖x‖₂ regression: training loss",
        "MSE training loss (log scale) of the Soft MoE regressor of ‖x‖₂, one line per "
        "expert count n, one panel per tokenization (tokens x dim); dotted: the paper's "
        "plateaus (read off its plot). Theorem 1: a single expert cannot fit the target."),
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


def read_table(tables_dir: Path, name: str) -> pd.DataFrame | None:
    """One tidy table, checked against SCHEMAS; None if an optional table is absent."""
    path = Path(tables_dir) / f"{name}.csv"
    if not path.is_file():
        if name in REQUIRED:
            raise UserError(f"{path}: required table not found; run `softmoe tabulate` first")
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV table ({err}); rerun the step that writes it") from None
    _check(path, name, frame)
    if name in REQUIRED and frame.empty:
        raise UserError(f"{path}: the table has no rows; rerun `softmoe tabulate`")
    return frame


def _check(path: Path, name: str, frame: pd.DataFrame) -> None:
    columns, numeric, nonempty = SCHEMAS[name]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)}")
    for col in numeric:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            raise UserError(f"{path}: column '{col}' must be numeric; row {int(bad.idxmax()) + 2} "
                            f"holds {frame[col][bad].iloc[0]!r}")
        frame[col] = values
    for col in nonempty:
        if frame[col].isna().any():
            raise UserError(f"{path}: column '{col}' is empty in row {int(frame[col].isna().idxmax()) + 2}")
    if name == "selection":
        _check_selection(path, frame)


def _check_selection(path: Path, frame: pd.DataFrame) -> None:
    unknown = sorted(set(frame["method"]) - METHODS)
    if unknown:
        raise UserError(f"{path}: column 'method' holds {unknown}; allowed: {sorted(METHODS)}")
    truth = {True: True, False: False, "True": True, "False": False, "true": True, "false": False,
             1: True, 0: False}
    renorm = frame["renormalize"].map(lambda v: truth.get(v))
    if renorm.isna().any():
        raise UserError(f"{path}: column 'renormalize' must be True or False")
    frame["renormalize"] = renorm.astype(bool)


def read_hardware(tables_dir: Path) -> dict | None:
    """hardware.json (written by the latency step) or None."""
    path = Path(tables_dir) / "hardware.json"
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err}); rerun `softmoe latency`") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object describing the machine")
    return obj


def k_at(n: int, fraction: float) -> int | None:
    """k = n * fraction as evaluated (params.k_values); None where it is not 1 <= k < n."""
    if n * fraction < 1:
        return None
    k = max(1, math.floor(n * fraction))
    return k if k < n else None


def frac_label(fraction: float) -> str:
    """0.25 -> 'n/4' (the paper's notation); other fractions as n·f."""
    names = {1.0: "n", 0.75: "3n/4", 0.5: "n/2", 0.25: "n/4", 0.125: "n/8"}
    return names.get(round(fraction, 6), f"n·{fraction:g}")


def mean_over_seeds(selection: pd.DataFrame) -> pd.DataFrame:
    """Selection rows averaged over training seeds (accuracy, std, count), with `seeds`."""
    keys = ["n", "k", "method", "renormalize"]
    out = selection.groupby(keys, as_index=False).agg(
        accuracy=("accuracy", "mean"), std=("std", "mean"), count=("count", "mean"),
        seeds=("seed", "nunique"))
    out["k_frac"] = out["k"] / out["n"]
    return out


def at_fraction(frame: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Rows whose k is the evaluated k = n * fraction."""
    ks = frame["n"].map(lambda n: k_at(int(n), fraction))
    return frame[frame["k"] == ks]


def make_figures(params: dict, tables_dir: Path, out_dir: Path) -> None:
    """Draw every figure of FIGURES from the tables into out_dir (PNG and SVG)."""
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    tables = {name: read_table(tables_dir, name) for name in SCHEMAS}
    drawers = {
        "fig1_selection_vs_fraction": lambda: _fig1(tables["selection"]),
        "fig2_selection_vs_n": lambda: _fig2(tables["selection"], params["evaluate"]["fractions"]),
        "fig3_synthetic_loss": lambda: _fig3_loss(tables["synthetic_loss"], params),
        "fig3_proof_check": lambda: _fig3_proof(tables["synthetic_proof"], params),
        "fig4_oracle": lambda: _fig4(tables["selection"], params),
        "fig5_latency": lambda: _fig5(tables["latency"]),
        "fig6_training_curves": lambda: _fig6_curves(tables["curves"]),
        "fig6_all_experts_vs_n": lambda: _fig6_all(tables["training"], params["dataset"]),
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


def _fig1(selection: pd.DataFrame) -> Figure | str:
    means = mean_over_seeds(selection)
    variants = _variants(means)
    if not variants:
        return "selection.csv has no Algorithm 1 rows"
    full = means[means["method"] == "all"].groupby("n", as_index=False)["accuracy"].mean()
    palette = _n_palette(means["n"])
    fig, axes = _panels(len(variants), sharey=True)
    for ax, renorm in zip(axes, variants):
        alg = means[(means["method"] == "alg1") & (means["renormalize"] == renorm)]
        for n, rows in alg.groupby("n"):
            rows = pd.concat([rows, full[full["n"] == n].assign(k_frac=1.0)]).sort_values("k_frac")
            ax.plot(rows["k_frac"], rows["accuracy"], color=palette[int(n)], label=f"n={int(n)}",
                    marker="." if len(rows) < 20 else None)
        ax.set(title=VARIANTS[renorm], xlabel="proportion of experts kept, k/n", ylabel="test accuracy",
               xlim=(0, 1.02))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(9, len(palette)),
               fontsize="small")
    return fig


def _fig2(selection: pd.DataFrame, fractions: list[float]) -> Figure | str:
    means = mean_over_seeds(selection)
    variants = _variants(means)
    if not variants:
        return "selection.csv has no Algorithm 1 rows"
    full = means[means["method"] == "all"].groupby("n", as_index=False)["accuracy"].mean()
    colours = dict(zip(sorted(fractions, reverse=True), sns.color_palette("deep", len(fractions))))
    fig, axes = _panels(len(variants), sharey=True)
    for ax, renorm in zip(axes, variants):
        rows = means[means["renormalize"] == renorm]
        ax.plot(full["n"], full["accuracy"], color="0.45", lw=2.5, marker="o", ms=5, label="all experts")
        for frac, colour in colours.items():
            alg = at_fraction(rows[rows["method"] == "alg1"], frac).sort_values("n")
            rnd = at_fraction(rows[rows["method"] == "random"], frac).sort_values("n")
            ax.plot(alg["n"], alg["accuracy"], color=colour, marker="o", ms=5,
                    label=f"Algorithm 1, k={frac_label(frac)}")
            ax.plot(rnd["n"], rnd["accuracy"], color=colour, ls="--", marker="s", ms=4,
                    label=f"random, k={frac_label(frac)} (±1 std)")
            std = rnd["std"].fillna(0)
            ax.fill_between(rnd["n"], rnd["accuracy"] - std, rnd["accuracy"] + std, color=colour, alpha=0.18, lw=0)
        _log2_axis(ax, means["n"])
        ax.set(title=VARIANTS[renorm], xlabel="number of experts n (fixed budget)", ylabel="test accuracy")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize="small")
    return fig


def _tokenizations(frame: pd.DataFrame, params: dict) -> list[str]:
    """The tokenizations of a table, in the order of params.synthetic.tokenizations."""
    found = set(frame["tokens"])
    order = [t for t in params["synthetic"]["tokenizations"] if t in found]
    return order + sorted(found - set(order))


def _fig3_loss(loss: pd.DataFrame | None, params: dict) -> Figure | str:
    if loss is None or loss.empty:
        return "synthetic_loss.csv missing or empty (synthetic step not run)"
    toks = _tokenizations(loss, params)
    ref = paper.e1_plateaus()
    palette = _n_palette(set(loss["n"]) | set(ref["n"]))
    fig, axes = _panels(len(toks), sharey=True)
    for ax, tok in zip(axes, toks):
        for n, rows in loss[loss["tokens"] == tok].groupby("n"):
            ax.plot(rows["step"], rows["loss"], color=palette[int(n)], label=f"n={int(n)}")
        for r in ref[ref["tokens"] == tok].itertuples():
            ax.axhline(r.loss, color=palette[int(r.n)], ls=":", lw=1.2)
        ax.set_yscale("log")
        ax.set(title=f"{tok} (tokens x dim)", xlabel="step", ylabel="MSE loss")
    axes[0].plot([], [], color="0.3", ls=":", label="paper plateau")
    axes[0].legend(fontsize="small")
    return fig


def _fig3_proof(proof: pd.DataFrame | None, params: dict) -> Figure | str:
    if proof is None or proof.empty:
        return "synthetic_proof.csv missing or empty (proof step not run)"
    toks = _tokenizations(proof, params)
    colours = dict(zip(sorted(set(proof["case"])), sns.color_palette("deep")))
    positive = proof.loc[proof["slot_gap"] > 0, "slot_gap"]
    floor = positive.min() / 100 if len(positive) else 1e-16  # where exact zeros are drawn
    fig, axes = _panels(len(toks), sharey=True)
    for ax, tok in zip(axes, toks):
        for case, rows in proof[proof["tokens"] == tok].sort_values("a").groupby("case"):
            ax.plot(rows["a"], rows["slot_gap"].where(rows["slot_gap"] > 0, floor), color=colours[case],
                    marker="o", label=f"{case}: slot-input gap")
            ax.plot(rows["a"], rows["norm_gap"], color=colours[case], ls="--", marker="^",
                    label=f"{case}: norm gap")
        if (proof["slot_gap"] <= 0).any():
            ax.axhline(floor, color="0.5", ls=":", lw=1, label="slot gap exactly 0 (drawn here)")
        ax.set_xscale("log")
        ax.set_yscale("log", nonpositive="mask")
        ax.set(title=f"{tok}, n = 1", xlabel="scale a of the input pair", ylabel="gap")
    axes[0].legend(fontsize="x-small")
    return fig


def oracle_rows(selection: pd.DataFrame) -> pd.DataFrame:
    """Per n: oracle accuracy, distinct subsets, random accuracy and std at the oracle's k."""
    means = mean_over_seeds(selection[~selection["renormalize"]])
    oracle = means[means["method"] == "oracle"][["n", "k", "accuracy", "count", "seeds"]]
    rnd = means[means["method"] == "random"][["n", "k", "accuracy", "std"]]
    out = oracle.merge(rnd, on=["n", "k"], how="left", suffixes=("", "_random"))
    out = out.rename(columns={"accuracy": "oracle", "count": "distinct", "accuracy_random": "random",
                              "std": "random_std"})
    out["possible"] = [math.comb(int(n), int(k)) for n, k in zip(out["n"], out["k"])]
    return out.sort_values("n").reset_index(drop=True)


def _fig4(selection: pd.DataFrame, params: dict) -> Figure | str:
    rows = oracle_rows(selection)
    if rows.empty:
        return ("selection.csv has no oracle rows: C(n, k) exceeds evaluate.oracle_limit "
                f"({params['evaluate']['oracle_limit']}) for every n")
    ref = paper.e2_oracle() if paper.REFERENCE.get(params["dataset"]) == "mnist" else None
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
    configs = sorted({(c, int(n)) for c, n in zip(latency["config"], latency["n"])})
    colours = dict(zip(configs, sns.color_palette("deep" if len(configs) <= 10 else "husl", len(configs))))
    fig, axes = _panels(len(batches), sharey=True)
    for ax, batch in zip(axes, batches):
        ideal = np.linspace(1 / 16, 1, 50)
        ax.plot(ideal, ideal, color="0.5", ls="--", lw=1, label="ideal k/n")
        for (config, n), b in latency[latency["batch"] == batch].sort_values("k").groupby(["config", "n"]):
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
