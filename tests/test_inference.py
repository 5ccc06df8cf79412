"""The interval tests behind the verdicts (softmoe.statistics.inference), checked on simulated tables with a
known truth: under a tie at the margin SUPPORTED and CONTRADICTED each occur at most α of the time,
a true effect beyond the margin is SUPPORTED with the power measured here, a true negative is
CONTRADICTED; plus the verdict logic and the order-statistic interval of a median.

Simulated selection tables are like the default study's: 3 training seeds, 1,000 test images,
Algorithm 1 and the mean of 10 random subsets scored per image, per-image accuracy around .75,
a seed-to-seed sd of Alg1 − random of about .013 and a per-image sd of the difference of about
.39 (the sd over seeds of one model's accuracy is about .015). Run with `-s` to see the measured
rates (they are quoted in docs/study.md §4)."""
import functools
import math

import numpy as np
import pytest
from scipy import stats

from softmoe.statistics import inference
from softmoe.statistics.inference import CONTRADICTED, INCONCLUSIVE, NOT_RUN, SUPPORTED, Estimate, Test

SEEDS, IMAGES, RANDOM_SUBSETS = 3, 1000, 10
ALPHA = inference.ALPHA


def allowance(sims: int, p: float = ALPHA) -> float:
    """Three binomial sd of a rate p measured over `sims` simulations."""
    return 3 * math.sqrt(p * (1 - p) / sims)


def _binomial(uniform, p, trials):
    """Binomial(trials, p) counts by inverting the CDF with one uniform per cell (exact, fast)."""
    q = 1 - p
    pmf = q ** trials
    cdf, count = pmf.copy(), np.zeros(p.shape, np.float32)
    ratio = p / np.maximum(q, 1e-12)
    for j in range(trials):
        count += uniform > cdf
        pmf = pmf * (trials - j) / (j + 1) * ratio
        cdf = cdf + pmf
    return count


def simulate_pairs(rng, sims: int, points: int, shift: float, chunk: int = 200):
    """Per-seed Alg1 − random accuracy differences and their per-image sd, shape (sims, points, SEEDS).

    Image i has a difficulty c_i (logit, shared by the seeds), seed s a skill b_s and an Algorithm 1
    advantage shift + e_s (logit); Algorithm 1 is correct on image i with probability
    σ(c_i + b_s + shift + e_s), each random subset with σ(c_i + b_s); the difference per image is
    a_i − (mean of 10 random subsets)_i, as evaluate's diff_sd."""
    diffs, sds = [], []
    for start in range(0, sims, chunk):
        size = (min(chunk, sims - start), points)
        c = rng.normal(1.5, 1.5, size + (1, IMAGES)).astype(np.float32)
        b = rng.normal(0.0, 0.1, size + (SEEDS, 1)).astype(np.float32)
        e = rng.normal(0.0, 0.1, size + (SEEDS, 1)).astype(np.float32)
        p_random = 1 / (1 + np.exp(-(c + b)))
        p_alg1 = 1 / (1 + np.exp(-(c + b + shift + e)))
        alg1 = rng.random(p_alg1.shape, dtype=np.float32) < p_alg1
        random = _binomial(rng.random(p_random.shape, dtype=np.float32), p_random, RANDOM_SUBSETS)
        d = alg1 - random / RANDOM_SUBSETS
        diffs.append(d.mean(axis=-1, dtype=np.float64))
        sds.append(d.std(axis=-1, ddof=1, dtype=np.float64))
    return np.concatenate(diffs), np.concatenate(sds)


def true_effect(shift: float) -> float:
    """E[σ(c + b + shift + e) − σ(c + b)] over the generative model (4 million draws)."""
    rng = np.random.default_rng(12345)
    c, b, e = rng.normal(1.5, 1.5, 4_000_000), rng.normal(0, 0.1, 4_000_000), rng.normal(0, 0.1, 4_000_000)
    return float(np.mean(1 / (1 + np.exp(-(c + b + shift + e))) - 1 / (1 + np.exp(-(c + b)))))


def family_verdicts(diffs, sds, margin: float, direction: str = "above"):
    """Verdicts of each simulated claim (one row of `points` tests), with the claim's m = points."""
    m = diffs.shape[1]
    est = inference.paired_mean(diffs, sds, IMAGES)
    lo, hi = inference.bounds(est, m)
    return inference.verdict_codes(inference.outcome_codes(lo, hi, margin, direction)), lo, hi


# ---- the verdict rates on simulated truths ------------------------------------------------------
@functools.cache
def pool(shift: float, points: int, seed: int):
    """Simulated (diffs, sds) of `points` headline points, cached across tests."""
    return simulate_pairs(np.random.default_rng(seed), points, 1, shift)


def families(shift: float, sims: int, m: int, seed: int):
    diffs, sds = pool(shift, sims * m, seed)
    return diffs.reshape(sims, m, SEEDS), sds.reshape(sims, m, SEEDS)


def test_the_simulated_tables_look_like_ours():
    diffs, sds = pool(0.0, 6000, 1)
    assert 0.008 < np.median(diffs.std(axis=-1, ddof=1)) < 0.02        # seed-to-seed sd of Alg1 − random
    assert 0.3 < np.median(sds) < 0.45                                  # per-image sd of the difference


def test_a_tie_gives_supported_and_contradicted_at_most_alpha():
    """4 headline points, each exactly at the margin: each wrong verdict at most α (Bonferroni
    bounds them by α/(2m) and α/2). Measured: SUPPORTED 0, CONTRADICTED ≈ 0.001."""
    sims, points = 1500, 4
    margin = true_effect(0.0)
    verdicts, lo, hi = family_verdicts(*families(0.0, sims, points, 1), margin)
    supported, contradicted = np.mean(verdicts == SUPPORTED), np.mean(verdicts == CONTRADICTED)
    missed = np.mean((lo > margin) | (hi < margin))                     # one interval of the family
    print(f"\ntie, m={points}, {sims} sims: SUPPORTED {supported:.4f}, CONTRADICTED {contradicted:.4f}, "
          f"one interval misses {missed:.4f} (nominal {ALPHA / points:.4f})")
    assert supported <= ALPHA + allowance(sims)
    assert contradicted <= ALPHA + allowance(sims)
    assert contradicted <= ALPHA / 2 + allowance(sims, ALPHA / 2)      # the Bonferroni bound itself
    assert missed <= ALPHA / points + allowance(sims * points, ALPHA / points)


def test_single_interval_covers_at_the_nominal_level():
    """m = 1: the 95 % interval covers the true difference at least 95 % of the time, for a tie and
    for a true effect (measured ≈ 0.997: the variance bound s²/S + v/N counts the seeds' image
    noise twice, see softmoe.statistics.inference)."""
    for shift, (diffs, sds) in ((0.0, pool(0.0, 6000, 1)), (0.8, pool(0.8, 3600, 3))):
        truth = true_effect(shift)
        lo, hi = inference.bounds(inference.paired_mean(diffs[:, 0], sds[:, 0], IMAGES), 1)
        coverage = np.mean((lo <= truth) & (truth <= hi))
        print(f"\nshift {shift}: true effect {truth:.4f}, coverage of the 95 % interval {coverage:.4f}")
        assert coverage >= 1 - ALPHA - allowance(len(diffs))


def test_power_for_a_true_effect_beyond_the_margin():
    """The (b) family as in the default study: 24 headline points, margin −0.01, every point's true
    effect ≈ +0.097 (0.107 beyond the margin). Measured per point: supports ≈ 0.94, and the whole
    claim SUPPORTED ≈ 0.2 (24 tests must all support); never CONTRADICTED."""
    sims, points = 150, 24
    truth = true_effect(0.8)
    assert 0.09 < truth < 0.1
    verdicts, lo, _ = family_verdicts(*families(0.8, sims, points, 3), -0.01)
    power, per_point = np.mean(verdicts == SUPPORTED), np.mean(lo > -0.01)
    print(f"\ntrue effect {truth:.4f}, margin -0.01, m={points}, {sims} sims: SUPPORTED {power:.4f} "
          f"(per point {per_point:.4f}); CONTRADICTED {np.mean(verdicts == CONTRADICTED):.4f}")
    assert per_point >= 0.88
    assert power >= 0.05
    assert not np.any(verdicts == CONTRADICTED)


def test_a_true_tie_against_a_negative_margin_is_rarely_contradicted():
    """A point at a tie (effect 0, as the paper's n = 4, k = n/4) judged with the margin −0.01 in
    a family of 24: contradicts at most α/2, and hardly ever supports (the smallest detectable
    distance beyond the margin, mde, is reported)."""
    diffs, sds = pool(0.0, 6000, 1)
    est = inference.paired_mean(diffs, sds, IMAGES)
    lo, hi = inference.bounds(est, 24)
    codes = inference.outcome_codes(lo, hi, -0.01, "above")
    print(f"\ntie at margin -0.01, m=24: supports {np.mean(codes == 1):.4f}, contradicts {np.mean(codes == -1):.4f}, "
          f"median mde {np.median(inference.mde(est.se, est.df, 24)):.4f}")
    assert np.mean(codes == -1) <= ALPHA / 2 + allowance(len(diffs), ALPHA / 2)


def test_a_true_negative_is_contradicted():
    """One of 4 points with a true effect of about −0.09 (margin −0.01), the others tied:
    CONTRADICTED in most claims (measured ≈ 0.85), never SUPPORTED."""
    sims = 600
    truth = true_effect(-0.6)
    assert -0.1 < truth < -0.08
    bad, bad_sd = pool(-0.6, sims, 5)
    tie, tie_sd = families(0.0, sims, 3, 1)
    verdicts, _, _ = family_verdicts(np.concatenate([bad, tie], axis=1), np.concatenate([bad_sd, tie_sd], axis=1),
                                     -0.01)
    rate = np.mean(verdicts == CONTRADICTED)
    print(f"\ntrue effect {truth:.4f} at one of 4 points, margin -0.01: CONTRADICTED {rate:.4f}")
    assert rate >= 0.7
    assert not np.any(verdicts == SUPPORTED)


def test_independent_difference_of_accuracies_covers():
    """All-experts accuracy of two models (3 seeds each, 1,000 images; seed sd .015): the interval of
    their difference (Satterthwaite) covers the truth at least 95 % of the time."""
    rng = np.random.default_rng(7)
    sims = 4000
    p1, p2 = 0.93, 0.95
    acc1 = rng.binomial(IMAGES, np.clip(p1 + rng.normal(0, 0.015, (sims, SEEDS)), 0, 1)) / IMAGES
    acc2 = rng.binomial(IMAGES, np.clip(p2 + rng.normal(0, 0.015, (sims, SEEDS)), 0, 1)) / IMAGES
    est = inference.accuracy_mean(acc2, IMAGES) - inference.accuracy_mean(acc1, IMAGES)
    lo, hi = inference.bounds(est, 1)
    coverage = np.mean((lo <= p2 - p1) & (p2 - p1 <= hi))
    print(f"\nindependent difference: coverage {coverage:.4f}")
    assert coverage >= 1 - ALPHA - allowance(sims)


# ---- the estimates ------------------------------------------------------------------------------
def test_seed_mean_variance_and_satterthwaite_df():
    values, image_var = np.array([0.80, 0.82, 0.84]), np.array([0.16, 0.15, 0.14])
    est = inference.seed_mean(values, image_var, 1000)
    seed_part, image_part = 0.02 ** 2 / 3, 0.15 / 1000
    assert est.effect == pytest.approx(0.82)
    assert est.se == pytest.approx(math.sqrt(seed_part + image_part))
    assert est.df == pytest.approx((seed_part + image_part) ** 2 / (seed_part ** 2 / 2 + image_part ** 2 / 999))
    one = inference.seed_mean(values[:1], image_var[:1], 1000)
    assert one.se == pytest.approx(math.sqrt(0.16 / 1000)) and one.df == pytest.approx(999)


def test_plus_four_and_paired_variance_are_never_zero():
    perfect = inference.accuracy_mean([1.0, 1.0, 1.0], 1000)
    assert perfect.se > 0.001 and math.isfinite(perfect.df)
    lo, hi = inference.bounds(perfect, 1)
    assert lo < 1.0 < hi
    assert inference.paired_var(0.0, 0.0, 1000) == pytest.approx(1 / 1001)
    # with a real spread the pseudo-counts change the variance by about 1/N only
    assert inference.paired_var(0.01, 0.35, 1000) == pytest.approx(0.35 ** 2, rel=0.02)
    assert inference.paired_var_bound(0.9, 0.8, 1000) >= inference.plus_four_var(0.9, 1000)


def test_difference_adds_variances():
    a, b = Estimate(0.5, ((0.01, 2),)), Estimate(0.2, ((0.02, 4),))
    d = a - b
    assert d.effect == pytest.approx(0.3) and d.se == pytest.approx(math.sqrt(0.03))
    assert d.df == pytest.approx(0.03 ** 2 / (0.01 ** 2 / 2 + 0.02 ** 2 / 4))


def test_interval_uses_the_bonferroni_t_quantile():
    est = Estimate(0.05, ((0.0001, 10),))
    t = inference.interval_test("x", est, 0.0, "above", m=5)
    q = stats.t.ppf(1 - 0.05 / 10, 10)
    assert t.lo == pytest.approx(0.05 - q * 0.01) and t.hi == pytest.approx(0.05 + q * 0.01)
    assert t.mde == pytest.approx((q + stats.norm.ppf(0.8)) * 0.01)
    assert t.outcome == "supports"
    assert inference.interval_test("x", est, 0.0, "below", m=5).outcome == "contradicts"
    assert inference.interval_test("x", est, 0.05, "above", m=5).outcome == "neither"
    assert set(t.record()) == {"what", "effect", "lo", "hi", "margin", "direction", "outcome", "mde"}


# ---- the verdict logic --------------------------------------------------------------------------
def _t(outcome: str, mde: float = 0.02, direction: str = "above") -> Test:
    return Test("p", 0.0, -1.0, 1.0, -0.01, direction, outcome, mde, 0.01, 10.0)


@pytest.mark.parametrize("outcomes, want", [
    (["supports", "supports"], SUPPORTED),
    (["supports", "neither"], INCONCLUSIVE),
    (["supports", "contradicts"], CONTRADICTED),
    (["neither", "contradicts", "supports"], CONTRADICTED),
    (["neither"], INCONCLUSIVE),
    ([], NOT_RUN),
])
def test_verdict_from_outcomes(outcomes, want):
    assert inference.verdict([_t(o) for o in outcomes]) == want


def test_outcome_codes_need_the_whole_interval_on_one_side():
    lo, hi = np.array([0.1, -0.2, -0.1, 0.0]), np.array([0.3, -0.1, 0.1, 0.2])
    assert list(inference.outcome_codes(lo, hi, 0.0, "above")) == [1, -1, 0, 0]
    assert list(inference.outcome_codes(lo, hi, 0.0, "below")) == [-1, 1, 0, 0]
    with pytest.raises(ValueError, match="direction"):
        inference.outcome_codes(lo, hi, 0.0, "up")


def test_detectable_names_the_least_precise_open_test():
    text = inference.detectable([_t("supports", 0.5), _t("neither", 0.03), _t("neither", 0.04)])
    assert "0.03" in text and "0.04" in text and "2 undecided" in text     # −0.01 + 0.04 = 0.03
    below = inference.detectable([_t("neither", 0.1, "below")])
    assert "≤ -0.11" in below
    assert inference.detectable([_t("supports")]) == ""
    assert "Bonferroni over 24" in inference.correction(24) and "99.79" in inference.correction(24)


# ---- the median of timing ratios ------------------------------------------------------------------
def test_median_interval_covers_the_true_median():
    """Per-round time ratios (lognormal, true median 0.4): the order-statistic interval at 95 %
    (and at 97.5 %, m = 2) covers 0.4 at least that often (measured ≈ 0.96 and 0.98)."""
    rng = np.random.default_rng(8)
    sims = 4000
    for m, rounds in ((1, 15), (2, 30)):
        _, lo, hi = inference.median_interval(0.4 * np.exp(rng.normal(0, 0.2, (sims, rounds))), m)
        coverage = np.mean((lo <= 0.4) & (0.4 <= hi))
        print(f"\nmedian interval, {rounds} rounds, m={m}: coverage {coverage:.4f}")
        assert coverage >= 1 - ALPHA / m - allowance(sims, ALPHA / m)


@pytest.mark.parametrize("m", [1, 3])
def test_median_interval_is_scipys_quantile_test_interval(m):
    rng = np.random.default_rng(9)
    for rounds in (6, 7, 12, 25, 40):
        values = rng.normal(size=rounds)
        ci = stats.quantile_test(values, q=0.0, p=0.5).confidence_interval(1 - ALPHA / m)
        _, lo, hi = inference.median_interval(values, m)
        if math.isnan(ci.low):
            assert (lo, hi) == (-math.inf, math.inf)
        else:
            assert (lo, hi) == (ci.low, ci.high)


def test_median_interval_with_too_few_rounds_is_unbounded():
    assert inference.min_rounds(1) == 6
    median, lo, hi = inference.median_interval([0.3, 0.31, 0.29, 0.32, 0.3], 1)
    assert median == pytest.approx(0.3) and lo == -math.inf and hi == math.inf
    t = inference.median_test("batch 1", [0.3, 0.31, 0.29, 0.32, 0.3], 0.6, "below", 1)
    assert t.outcome == "neither" and "too few" in inference.detectable([t])
    t = inference.median_test("batch 1", np.linspace(0.25, 0.35, 20), 0.6, "below", 2)
    assert t.outcome == "supports" and t.hi < 0.6 and t.lo >= 0.25
    with pytest.raises(ValueError, match="no finite"):
        inference.median_interval([math.nan])


def test_linear_combination_scales_the_variances():
    a, b = Estimate(1.0, ((0.04, 3),)), Estimate(3.0, ((0.01, 9),))
    slope = inference.linear([a, b], [-0.5, 0.5])
    assert slope.effect == pytest.approx(1.0) and slope.se == pytest.approx(math.sqrt(0.25 * 0.05))
    assert slope.df == pytest.approx((0.0125 ** 2) / ((0.01 ** 2) / 3 + (0.0025 ** 2) / 9))
    with pytest.raises(ValueError, match="weights"):
        inference.linear([a, b], [1.0])
