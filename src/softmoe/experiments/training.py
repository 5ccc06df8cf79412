"""Training at the fixed parameter budget: one row per trained model (softmoe train's
metrics.json) and per epoch (its curves.csv), the training figures and claim f (the budget holds
the all-experts accuracy across n)."""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from softmoe import layout, paper, plots
from softmoe.experiments.unit import (Claim, Evidence, Experiment, Figure as FigureSpec, Table, schema,
                                      scope, verdict)

BUDGET_SPREAD = 0.02     # (f) all-experts accuracy within 2 points across n

TRAINING = schema("dataset n seed test_accuracy test_loss train_loss params_total params_experts "
                  "expert_hidden epochs steps wall_time_s device threads",
                  "n seed test_accuracy test_loss train_loss params_total params_experts "
                  "expert_hidden epochs steps wall_time_s threads",
                  "dataset n seed test_accuracy")
CURVES = schema("epoch step train_loss train_accuracy test_loss test_accuracy n seed",
                "epoch step train_loss train_accuracy test_loss test_accuracy n seed", "step n seed")


def _fig6_curves(curves: pd.DataFrame | None) -> Figure | str:
    if curves is None or curves.empty:
        return "curves.csv missing or empty"
    palette = plots.n_palette(curves["n"])
    fig, (acc, loss) = plots.panels(2)
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
    fig, (ax,) = plots.panels(1)
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
    plots.log2_axis(ax, ns)
    ax.set(title="all experts (k = n)", xlabel="number of experts n (fixed budget)", ylabel="test accuracy")
    ax.legend(fontsize="small")
    return fig


def claim_budget_holds(training: pd.DataFrame, scope: dict) -> Claim:
    claim = Claim("f", "at a fixed parameter budget the all-experts accuracy barely depends on n", scope,
                  f"best − worst seed-mean all-experts test accuracy across n ≤ {BUDGET_SPREAD:g}",
                  "the paper's MNIST values span .971–.980 (0.009)")
    claim.paper = "MNIST .971–.980 across n = 2…512"
    means = training.groupby("n")["test_accuracy"].mean()
    if len(means) < 2:
        claim.evidence = "fewer than two n trained"
        return claim
    spread = float(means.max() - means.min())
    claim.ours = (f"spread {spread:.3f}: n={int(means.idxmin())} {means.min():.3f} … "
                  f"n={int(means.idxmax())} {means.max():.3f}")
    claim.numbers = {"spread": round(spread, 5)}
    claim.verdict = verdict([spread <= BUDGET_SPREAD])
    return claim


# ---- the paper's other datasets ----------------------------------------------------------------


EXPERIMENT = Experiment(
    key="training", title="Training at the fixed budget", paper="figure 1 (k = n), the MNIST recipe",
    tables=(Table("training", TRAINING, step="train", source=layout.TRAIN + "/metrics.json", runs=layout.runs,
                  required=True),
            Table("curves", CURVES, step="train", source=layout.TRAIN + "/curves.csv", runs=layout.runs)),
    figures=(
        FigureSpec("fig6_training_curves", "Training curves",
                   "Test accuracy (logged only, never used to choose a checkpoint) and training loss "
                   "against the optimizer step, one line per n (per seed).", ("curves",),
                   lambda ev: _fig6_curves(ev.frames["curves"])),
        FigureSpec("fig6_all_experts_vs_n", "All-experts accuracy vs number of experts",
                   "Test accuracy of the full model (k = n) against n at a fixed expert parameter budget: "
                   "does the budget hold accuracy as the experts get narrower? Crosses: the paper.", ("training",),
                   lambda ev: _fig6_all(ev.frames["training"], ev.study.dataset)),
    ),
    claims=(lambda ev: claim_budget_holds(ev.frames["training"], scope(ev)),),
)
