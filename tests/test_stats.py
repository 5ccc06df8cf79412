"""softmoe.study.stats: k for a fraction, means over seeds with their 95 % intervals, z, final
losses, the constant predictor of ‖x‖₂, Spearman's ρ."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from softmoe.study import params as params_mod
from softmoe.study import stats
from test_figures import alg1_acc, sample_params, selection_rows


def _old_k_values(n: int, evaluate: dict) -> list[int]:
    """params.k_values as it was before it delegated to stats (commit dc14fa8)."""
    ks = {max(1, math.floor(n * f)) for f in evaluate["fractions"] if n * f >= 1}
    ks |= set(evaluate["absolute_k"])
    if evaluate["every_k"]:
        ks |= set(range(1, n))
    return sorted(k for k in ks if 1 <= k < n)


@pytest.mark.parametrize("evaluate", [
    {"fractions": [0.5, 0.25, 0.125], "absolute_k": [], "every_k": False},
    {"fractions": [0.5, 0.25, 0.125], "absolute_k": [1, 5, 600], "every_k": False},
    {"fractions": [1.0, 0.75, 0.3, 0.01], "absolute_k": [2], "every_k": False},
    {"fractions": [0.5, 0.125], "absolute_k": [3], "every_k": True},
])
def test_k_values_equal_the_old_behaviour(evaluate):
    for n in range(1, 600):
        assert stats.k_values(n, evaluate["fractions"], evaluate["absolute_k"], evaluate["every_k"]) == \
            _old_k_values(n, evaluate), n


def test_k_at_matches_the_evaluated_k():
    ev = sample_params()["evaluate"]
    for n in (2, 3, 4, 8, 12, 100, 512):
        expected = set(params_mod.Evaluate.of({**ev, "every_k": False, "absolute_k": []}).k_values(n))
        assert {stats.k_at(n, f) for f in ev["fractions"]} - {None} == expected, n
    assert stats.k_at(2, 0.25) is None and stats.k_at(8, 1.0) is None and stats.k_at(12, 0.125) == 1


def test_latency_ks_and_fraction_labels():
    assert stats.latency_ks(8, [1.0, 0.75, 0.5, 0.25, 0.125]) == [8, 6, 4, 2, 1]
    assert stats.latency_ks(4, [1.0, 0.5, 0.25, 0.125]) == [4, 2, 1]      # n/4 and n/8 both give k = 1
    assert [stats.frac_label(f) for f in (1.0, 0.5, 0.25, 0.125, 0.3)] == ["n", "n/2", "n/4", "n/8", "n·0.3"]


def test_z_score_hand_case():
    assert stats.z_score(0.90, 0.82, 0.02) == pytest.approx(4.0)
    assert stats.z_score(0.80, 0.82, 0.01) == pytest.approx(-2.0)
    assert stats.z_score(0.9, 0.8, 0.0) == math.inf
    assert stats.z_score(0.7, 0.8, 0.0) == -math.inf
    assert math.isnan(stats.z_score(0.8, 0.8, 0.0))


def test_half_width_adds_seed_spread_and_test_sampling():
    # one seed: the binomial interval of 1,000 test images only, whatever the std says
    assert stats.half_width(0.9, float("nan"), 1, 1000) == pytest.approx(1.959964 * math.sqrt(0.09 / 1000))
    assert stats.half_width(0.9, 0.05, 1, 1000) == stats.half_width(0.9, float("nan"), 1, 1000)
    assert stats.half_width(0.9, 0.0, 1, 1000) == pytest.approx(0.018594, abs=1e-6)
    # three seeds with std .01: training spread std²/3 added in quadrature
    assert stats.half_width(0.9, 0.01, 3, 1000) == pytest.approx(1.959964 * math.sqrt(0.09 / 1000 + 1e-4 / 3))
    # more test images shrink it like 1/√images; certain accuracies have no sampling error
    assert stats.half_width(0.9, 0.0, 1, 10_000) == pytest.approx(stats.half_width(0.9, 0.0, 1, 1000) / math.sqrt(10))
    assert stats.half_width(1.0, 0.0, 1, 1000) == 0.0
    assert stats.half_width(0.9, 0.01, 3, 0) == pytest.approx(1.959964 * 0.01 / math.sqrt(3))


def test_half_width_covers_95_percent_of_simulated_test_sets():
    rng = np.random.default_rng(0)
    p, images = 0.8, 1000
    width = stats.half_width(p, float("nan"), 1, images)
    hits = rng.binomial(images, p, size=20_000) / images
    assert np.mean(np.abs(hits - p) <= width) == pytest.approx(0.95, abs=0.01)


def test_means_over_seeds_and_fraction_rows():
    sel = selection_rows(ns=[8, 16], seeds=(0, 1))
    means = stats.mean_over_seeds(sel)
    row = means[(means["n"] == 16) & (means["k"] == 2) & (means["method"] == "alg1") & ~means["renormalize"]]
    assert len(row) == 1 and row["seeds"].iloc[0] == 2 and row["images"].iloc[0] == 1000
    assert row["accuracy"].iloc[0] == pytest.approx(round(alg1_acc(16, 2), 4) + 0.001, abs=1e-4)
    # the two seeds differ by .002: sample std √2·.001, and the interval adds it to the sampling
    assert row["seed_std"].iloc[0] == pytest.approx(0.002 / math.sqrt(2), abs=1e-4)
    acc = row["accuracy"].iloc[0]
    assert row["ci"].iloc[0] == pytest.approx(stats.half_width(acc, row["seed_std"].iloc[0], 2, 1000))
    assert (means["k_frac"] == means["k"] / means["n"]).all()
    eighth = stats.at_fraction(means[means["method"] == "alg1"], 0.125)
    assert sorted(set(zip(eighth["n"], eighth["k"]))) == [(8, 1), (16, 2)]


def test_final_loss_is_the_mean_of_the_last_tenth():
    loss = pd.DataFrame({"step": range(20), "loss": [100.0] * 18 + [2.0, 4.0], "variance": 5, "tokens": "5x2",
                         "n": 1})
    assert stats.final_losses(loss)["final_loss"].tolist() == [3.0]
    assert stats.final_loss([5.0, 1.0]) == 1.0 and stats.final_loss([7.0]) == 7.0
    # one row per (variance, tokens, n), in step order whatever the file order
    two = pd.concat([loss, loss.assign(variance=25, loss=loss["loss"] * 5)]).sample(frac=1, random_state=0)
    finals = stats.final_losses(two)
    assert finals[["variance", "tokens", "n"]].values.tolist() == [[5, "5x2", 1], [25, "5x2", 1]]
    assert finals["final_loss"].tolist() == [3.0, 15.0]


def test_constant_predictor_loss_is_the_variance_of_the_norm():
    """Var‖x‖₂ for x ~ N(0, v·I₁₀): 12.17 at v = 25 (the paper's 2×5 n = 1 plateau, ≈12) and
    2.43 at v = 5 (docs/study.md §5 E1)."""
    assert stats.constant_predictor_loss(25) == pytest.approx(12.17, abs=0.005)
    assert stats.constant_predictor_loss(5) == pytest.approx(2.43, abs=0.005)
    x = np.random.default_rng(0).normal(0.0, math.sqrt(25), size=(200_000, 10))
    assert np.linalg.norm(x, axis=1).var() == pytest.approx(stats.constant_predictor_loss(25), rel=0.01)
    assert stats.constant_predictor_loss(1, dim=1) == pytest.approx(1 - 2 / math.pi)   # half-normal


def test_spearman():
    assert stats.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert stats.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(stats.spearman([1, 2, 3], [5, 5, 5]))
