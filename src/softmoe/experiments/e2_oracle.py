"""E2: the oracle -- do specialised expert subsets exist? (docs/study.md §5 E2; the paper's
table 1): the best k-subset per input, read from the selection table (its oracle rows), its
figure and claim b3."""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from softmoe.experiments import plots
from softmoe.statistics import inference, verdicts
from softmoe.study import paper
from softmoe.statistics.discrepancies import oracle_rows
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.unit import Claim, Evidence, Experiment, Figure as FigureSpec, Table, schema

STEP_MARGIN = -0.01      # (b3) each next n may be at most one point below the previous one


def _fig4(selection: pd.DataFrame, oracle_limit: int, reference: str | None) -> Figure | str:
    rows = oracle_rows(selection)
    if rows.empty:
        return ("selection.csv has no oracle rows: C(n, k) exceeds evaluate.oracle_limit "
                f"({oracle_limit}) for every n")
    ref = paper.e2_oracle() if reference == "mnist" else None
    fig, (acc, cnt) = plots.panels(2)
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
        plots.log2_axis(ax, list(rows["n"]) + ([] if ref is None else list(ref["n"])))
        ax.set_xlabel("number of experts n")
        ax.legend(fontsize="x-small")
    acc.set(title="accuracy at k = n·oracle fraction", ylabel="test accuracy")
    cnt.set_yscale("log")
    cnt.set(title="best subsets used", ylabel="count")
    return fig


def claim_oracle_rises(selection: pd.DataFrame, scope: dict, scale: dict | None = None) -> Claim:
    """(b3) the oracle's accuracy (best k-subset per input, k = n/4): higher at the largest n than
    at the smallest, and no step from one n to the next clearly down."""
    claim = Claim("b3", "the best k-subset per input (oracle, k = n/4) gets more accurate as n grows", scope, "b",
                  f"oracle(largest n) − oracle(smallest n) > 0, and oracle(next n) − oracle(n) ≥ {STEP_MARGIN:g} "
                  "for every step (means over training seeds)",
                  "the paper's values rise (94.69 → 99.90 → 100.00); near 100 % a step can only saturate, so "
                  "steps are judged as non-inferior within one point, the ends as a rise", scale=scale or {})
    claim.paper = "n=4: .9469, n=8: .9990, n=16: 1.0000 (table 1)"
    rows = oracle_rows(selection)
    found = [(int(r.n), verdicts.accuracy(selection, "oracle", int(r.n), int(r.k))) for r in rows.itertuples()]
    found = [(n, e) for n, e in found if e is not None]
    if len(found) < 2:
        return verdicts.not_run(claim, "oracle rows for fewer than two n (C(n, k) above evaluate.oracle_limit)")
    m = len(found)          # the rise from the smallest to the largest n, and each of the m − 1 steps
    (n0, first), (n1, last) = found[0], found[-1]
    tests = [inference.interval_test(f"oracle(n={n1}) − oracle(n={n0})", last - first, 0.0, "above", m)]
    tests += [inference.interval_test(f"oracle(n={b}) − oracle(n={a})", eb - ea, STEP_MARGIN, "above", m)
              for (a, ea), (b, eb) in zip(found, found[1:])]
    claim.ours = ", ".join(f"n={n}: {float(e.effect):.4f}" for n, e in found)
    claim.numbers = {f"n{n}": round(float(e.effect), 5) for n, e in found}
    return verdicts.decide(claim, tests)


# ---- (e) inference time ----------------------------------------------------------------------


EXPERIMENT = Experiment(
    key="E2", title="Oracle: best expert subsets", paper="table 1",
    figures=(FigureSpec(
        "fig4_oracle", "Oracle: best expert subset per input",
        "Left: share of test inputs some k-subset (k = n·oracle fraction) predicts correctly, "
        "against a random k-subset (±1 std) and the paper's table 1 (crosses). Right: distinct "
        "best subsets used over the test set, with the number of possible subsets C(n, k).",
        (SELECTION.name,),
        lambda ev: _fig4(ev.frames[SELECTION.name], ev.study.evaluate.oracle_limit,
                         paper.REFERENCE.get(ev.study.dataset))),),
    claims=(lambda ev: claim_oracle_rises(ev.frames[SELECTION.name], ev.scope, ev.scale),),
)
