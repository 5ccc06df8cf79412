"""n = 1, the single-expert control at the same parameter budget (issue 21, item 6): one expert
of hidden width 784 trains, evaluates to its all-experts row only (no k < n, no oracle), and goes
through the summary and the figures beside the other n (fig1 has no curve for it; fig2 and fig6
put it on their log2 axes)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import torch
import yaml
from test_figures import curves_rows, sample_study, selection_rows, training_rows, write_sample_tables

from softmoe.audit import summary
from softmoe.steps import evaluate, train
from softmoe.workflow import tables
from softmoe.experiments import e3_selection as e3, training as training_exp
from softmoe.study.params import Study

ROOT = Path(__file__).resolve().parents[1]
NS = [1, 2, 4, 8]


def test_one_expert_trains_at_the_budget_and_evaluates_to_its_all_row(mnist5k, tmp_path):
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert 1 in p["experts"], "params.yaml's grid has the single-expert control"
    p["train"].update(max_steps=16, batch_size=256)
    p["evaluate"].update(random_seeds=[0, 1], batch_size=500)
    study = Study.of(p)
    torch.set_num_threads(1)
    metrics = train.train_run(study.train, study.model, study.dataset_entry, mnist5k, 1, 0, tmp_path / "n1")
    # the budget: one expert as wide as all of them together (2 x 196 x 784 expert weights)
    assert (metrics["expert_hidden"], metrics["params_experts"]) == (784, 2 * 196 * 784)
    assert metrics["test_accuracy"] > 0.3                       # it trained (chance: 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no statistics over an empty set of k
        rows = evaluate.selection_rows(study.evaluate, study.train, study.model, study.dataset_entry, mnist5k,
                                       tmp_path / "n1")
    assert rows[["method", "k", "n", "renormalize"]].values.tolist() == [["all", 1, 1, False], ["all", 1, 1, True]]
    assert (rows["accuracy"] == metrics["test_accuracy"]).all()   # the same model, the same test split
    out = tmp_path / "eval" / "n1-s0.csv"
    evaluate.evaluate_run(study.evaluate, study.train, study.model, study.dataset_entry, mnist5k,
                          tmp_path / "n1", out)
    tables.check(out, e3.SELECTION.name, pd.read_csv(out))


@pytest.fixture(scope="module")
def with_one(tmp_path_factory) -> Path:
    """The sample tables of tests/test_figures.py with n = 1 in the grid."""
    folder = tmp_path_factory.mktemp("tables")
    return write_sample_tables(folder, selection=selection_rows(ns=NS, seeds=(0, 1)),
                               training=training_rows(ns=NS, seeds=(0, 1)), curves=curves_rows(ns=NS))


def test_summary_has_the_all_experts_entry_of_n1(with_one, tmp_path):
    out = tmp_path / "mnist5k.json"
    summary.summarize("mnist5k", with_one, out, tmp_path / "machine.json")
    per_n = json.loads(out.read_text())["experts"]
    assert list(per_n) == [f"n{n}" for n in NS]
    one = per_n["n1"]
    assert set(one) == {"seeds", "all", "all_ci95", "params_total"} and one["seeds"] == 2
    assert one["all"] == pytest.approx(selection_rows(ns=[1], seeds=(0, 1))["accuracy"].mean(), abs=1e-5)
    assert "k_n2" in per_n["n2"] and "k_n4" in per_n["n4"]


def _xticks(ax) -> list[float]:
    return [float(t) for t in ax.get_xticks()]


def test_figures_show_n1_where_it_has_a_number(with_one):
    frames = tables.read_all(with_one)
    with matplotlib.rc_context():
        fig1 = e3._fig1(frames[e3.SELECTION.name], "mnist")
        labels = {line.get_label() for ax in fig1.axes for line in ax.get_lines()}
        assert "n=1" not in labels and {"n=2", "n=4", "n=8"} <= labels        # no k < n: no curve
        fig2 = e3._fig2(frames[e3.SELECTION.name], sample_study().evaluate.fractions, "mnist")
        ax = fig2.axes[0]
        assert ax.get_xscale() == "log" and _xticks(ax) == [1, 2, 4, 8]
        full = ax.containers[0]                                             # the all-experts error bars
        assert list(full.lines[0].get_xdata()) == NS
        fig6 = training_exp._fig6_all(frames[training_exp.TRAINING.name], "mnist5k")
        assert 1 in _xticks(fig6.axes[0])
        assert 1 in list(fig6.axes[0].get_lines()[0].get_xdata())
        curves = training_exp._fig6_curves(frames[training_exp.CURVES.name])
        assert "n=1" in {line.get_label() for line in curves.axes[0].get_lines()}


class NoFastPath(torch.nn.Module):
    """A one-expert model evaluated through the generic path (forward with k / keep, as ViTs are)."""
    num_experts = 1

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x, k=None, renormalize=False, keep=None):
        assert k is None and keep is None, "no k < n at n = 1"
        return self.head(x)


def test_generic_path_gives_the_all_row_only_at_n1():
    torch.manual_seed(0)
    model, x, y = NoFastPath(), torch.randn(10, 4), torch.randint(0, 3, (10,))
    with torch.no_grad():
        expect = float((model(x).argmax(1) == y).float().mean())
    cfg = Study.of(yaml.safe_load((ROOT / "params.yaml").read_text())).evaluate
    rows = evaluate.selection_table(model, [(x[:6], y[:6]), (x[6:], y[6:])], 10, cfg)
    assert rows["method"].tolist() == ["all", "all"] and rows["renormalize"].tolist() == [False, True]
    assert rows["accuracy"].tolist() == [pytest.approx(expect)] * 2


def test_report_tables_carry_n1_with_no_k_below_n(tmp_path):
    """The whole report (claims, figures, report) from tables whose grid has n = 1: the training
    table lists it with its width 784, the selection columns of k < n stay empty for it."""
    import test_report
    from test_figures import sample_params
    (tmp_path / "reports").mkdir()
    grid = [1, 2, 4, 8, 16]
    _, md = test_report._build(tmp_path, sample_params(experts=grid), selection=selection_rows(ns=grid, seeds=(0, 1)),
                               training=training_rows(ns=grid, seeds=(0, 1)), curves=curves_rows(ns=grid))
    text = md.read_text()
    one = [line for line in text.splitlines() if line.startswith("| 1 | ")]
    assert one and all("784" in line for line in one), one
