"""Training at the fixed parameter budget: one row per trained model (softmoe train's
metrics.json: science only) with its timing (timing.json: wall time, threads, CPU model and code
paths, which differ between hosts) and per epoch (its curves.csv), the training figures and check x1 (the budget holds
the all-experts accuracy across n)."""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from softmoe.experiments import plots
from softmoe.statistics import inference, verdicts
from softmoe.study import layout, paper
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.unit import Claim, Evidence, Experiment, Figure as FigureSpec, Table, schema

BUDGET_BAND = 0.02       # (x1) every n's all-experts accuracy within ±0.02 of the mean over n

TRAINING_COLUMNS = schema("dataset n seed test_accuracy test_loss train_loss params_total params_experts "
                          "expert_hidden epochs steps device",
                          "n seed test_accuracy test_loss train_loss params_total params_experts "
                          "expert_hidden epochs steps",
                          "dataset n seed test_accuracy")
TRAINING_TIME_COLUMNS = schema("dataset n seed wall_time_s device threads cpu numerics aten_capability",
                               "n seed wall_time_s threads", "dataset n seed wall_time_s")
CURVES_COLUMNS = schema("epoch step train_loss train_accuracy test_loss test_accuracy n seed",
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


def claim_budget_holds(training: pd.DataFrame, scope: dict, images: int, scale: dict | None = None) -> Claim:
    """(x1, our check) equivalence: each n's all-experts accuracy (mean over training seeds, on
    `images` test images) minus the mean over every n lies inside ±BUDGET_BAND."""
    claim = Claim("x1", "at a fixed parameter budget the all-experts accuracy barely depends on n "
                  "(n = 1 included when the grid has it)", scope, None,
                  f"acc(n) − mean over n of acc ∈ (−{BUDGET_BAND:g}, +{BUDGET_BAND:g}) for every n: two tests per n",
                  f"an equivalence band of ±{BUDGET_BAND:g}: twice the paper's own MNIST spread (.971–.980, 0.009) "
                  "and about one 95 % interval of a 1,000-image test accuracy", scale=scale or {})
    claim.paper = "MNIST .971–.980 across n = 2…512 (the paper has no n = 1)"
    by_n = {int(n): g["test_accuracy"].to_numpy(float) for n, g in training.groupby("n")}
    if len(by_n) < 2:
        return verdicts.not_run(claim, "fewer than two n trained")
    ns = sorted(by_n)
    est = [inference.accuracy_mean(by_n[n], images) for n in ns]
    size = len(ns)
    tests = []
    for i, n in enumerate(ns):
        deviation = inference.linear(est, [(1.0 if j == i else 0.0) - 1.0 / size for j in range(size)])
        tests += [inference.interval_test(f"n={n}: acc − mean over n", deviation, -BUDGET_BAND, "above", 2 * size),
                  inference.interval_test(f"n={n}: acc − mean over n", deviation, BUDGET_BAND, "below", 2 * size)]
    means = {n: float(e.effect) for n, e in zip(ns, est)}
    low, high = min(means, key=means.get), max(means, key=means.get)
    claim.ours = (f"spread {means[high] - means[low]:.3f}: n={low} {means[low]:.3f} … n={high} {means[high]:.3f}; "
                  f"mean over n {sum(means.values()) / size:.3f}")
    claim.numbers = {"spread": round(means[high] - means[low], 5)}
    claim.evidence = verdicts.seeds_note(int(training["seed"].nunique())).removeprefix("; ")
    return verdicts.decide(claim, tests)


# ---- the paper's other datasets ----------------------------------------------------------------


def _test_images(ev: Evidence) -> int:
    """The test images each all-experts accuracy was measured on (the selection table's count)."""
    return verdicts.images_of(ev.frames[SELECTION.name])


# ---- what the claims on the image grid were judged on ------------------------------------------


def devices(training: pd.DataFrame) -> str:
    """The training device(s) of the training table, "–" without the column."""
    return ", ".join(sorted({str(d) for d in training["device"]})) if "device" in training else "–"


def scope(study, frames: dict) -> dict:
    """What a claim on the image grid was judged on (Evidence.scope): dataset, training device(s), model kind."""
    return {"dataset": study.dataset, "device": devices(frames[TRAINING.name]), "model": study.model.kind}


def run_scale(study, frames: dict) -> dict:
    """This run's scale next to the paper's (Evidence.scale): softmoe.statistics.verdicts.grid_scale of the
    study, its training and selection tables and the training device(s)."""
    train = frames[TRAINING.name]
    return verdicts.grid_scale(study, train, frames.get(SELECTION.name), devices(train))


TRAINING = Table("training", TRAINING_COLUMNS, step="train",
                 source=layout.TRAIN + "/metrics.json", runs=layout.runs, required=True)
TRAINING_TIME = Table("training_time", TRAINING_TIME_COLUMNS, step="train",
                      source=layout.TRAIN + "/timing.json", runs=layout.runs)
CURVES = Table("curves", CURVES_COLUMNS, step="train",
               source=layout.TRAIN + "/curves.csv", runs=layout.runs)
EXPERIMENT = Experiment(
    key="training", title="Training at the fixed budget", paper="figure 1 (k = n), the MNIST recipe",
    tables=(TRAINING, TRAINING_TIME, CURVES),
    figures=(
        FigureSpec("fig6_training_curves", "Training curves",
                   "Test accuracy (logged only, never used to choose a checkpoint) and training loss "
                   "against the optimizer step, one line per n (per seed).", (CURVES.name,),
                   lambda ev: _fig6_curves(ev.frames[CURVES.name])),
        FigureSpec("fig6_all_experts_vs_n", "All-experts accuracy vs number of experts",
                   "Test accuracy of the full model (k = n) against n at a fixed expert parameter budget "
                   "(n = 1: one expert as wide as all of them together, the single-expert control): "
                   "does the budget hold accuracy as the experts get narrower? Crosses: the paper.", (TRAINING.name,),
                   lambda ev: _fig6_all(ev.frames[TRAINING.name], ev.study.dataset)),
    ),
    claims=(lambda ev: claim_budget_holds(ev.frames[TRAINING.name], ev.scope, _test_images(ev), ev.scale),),
)

