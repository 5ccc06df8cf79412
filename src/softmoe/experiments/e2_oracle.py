"""E2: the oracle -- do specialised expert subsets exist? (docs/study.md §5 E2; the paper's
table 1): the best k-subset per input, read from the selection table (its oracle rows), its
figure and claim d."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from softmoe import paper, plots
from softmoe.discrepancies import oracle_rows
from softmoe.experiments.unit import (Claim, Evidence, Experiment, Figure as FigureSpec, Table, schema,
                                      scope, verdict)


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


def claim_oracle_rises(selection: pd.DataFrame, scope: dict) -> Claim:
    claim = Claim("d", "the best k-subset per input (oracle, k = n/4) gets more accurate as n grows", scope,
                  "never falls from one n to the next, and higher at the largest n than at the smallest "
                  "(or 100 % at both)", "the paper's values rise monotonically (94.69 → 99.90 → 100.00)")
    claim.paper = "n=4: .9469, n=8: .9990, n=16: 1.0000 (table 1)"
    rows = oracle_rows(selection)
    if len(rows) < 2:
        claim.evidence = "oracle rows for fewer than two n"
        return claim
    acc = rows["oracle"].to_numpy()
    claim.ours = ", ".join(f"n={int(r.n)}: {r.oracle:.4f}" for r in rows.itertuples())
    claim.numbers = {f"n{int(r.n)}": round(float(r.oracle), 5) for r in rows.itertuples()}
    claim.verdict = verdict([bool(np.all(np.diff(acc) >= 0) and (acc[-1] > acc[0] or acc[0] >= 1.0))])
    return claim


# ---- (e) inference time ----------------------------------------------------------------------


EXPERIMENT = Experiment(
    key="E2", title="Oracle: best expert subsets", paper="table 1",
    figures=(FigureSpec(
        "fig4_oracle", "Oracle: best expert subset per input",
        "Left: share of test inputs some k-subset (k = n·oracle fraction) predicts correctly, "
        "against a random k-subset (±1 std) and the paper's table 1 (crosses). Right: distinct "
        "best subsets used over the test set, with the number of possible subsets C(n, k).",
        ("selection",),
        lambda ev: _fig4(ev.frames["selection"], ev.study.evaluate.oracle_limit, paper.REFERENCE.get(ev.study.dataset))),),
    claims=(lambda ev: claim_oracle_rises(ev.frames["selection"], scope(ev)),),
)
