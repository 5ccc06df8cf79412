"""Interval tests behind the claims' verdicts (docs/study.md §4; the claims step).

A claim is judged by a family of m tests. Each test has an estimate (an effect, its standard
error from the run's own variation, and Welch–Satterthwaite degrees of freedom) and a margin on
one side: direction "above" means the claim says the true effect exceeds the margin, "below" that
it stays under it. The m two-sided intervals are simultaneous by Bonferroni: each at confidence
1 − α/m, so that all m cover their true effects with probability ≥ 1 − α (α = 0.05).

A test supports the claim when its interval lies wholly on the claimed side of the margin, and
contradicts it when it lies wholly on the other side. Verdicts: SUPPORTED (every test supports),
CONTRADICTED (some test contradicts), INCONCLUSIVE (neither: the report states the smallest
effect beyond the margin the run detects with 80 % power), NOT RUN (no tests; the claim says why).
Under a tie at the margin, a false CONTRADICTED has probability ≤ α/2 and a false SUPPORTED
≤ α/(2m); tests/test_inference.py checks both on simulated tables and measures the power.

Variance of a mean over S training seeds, each scored on the same N test images:
s_seed²/S + v/N, where s_seed is the sd of the per-seed values (S − 1 df) and v the per-image
variance averaged over seeds (N − 1 df). The seed spread already contains part of the image
noise, so this is conservative. Accuracies use the plus-four proportion (x + 2)/(N + 4) for v and
paired per-image differences the Agresti–Min pseudo-counts, so no interval has zero width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05                 # family-wise over one claim's tests
POWER = 0.8                  # the power at which `mde` is stated
SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = "SUPPORTED", "CONTRADICTED", "INCONCLUSIVE", "NOT RUN"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN)
OUTCOMES = {1: "supports", -1: "contradicts", 0: "neither"}
DIRECTIONS = ("above", "below")


# ---- estimates -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """An effect with independent variance components ((variance, df), ...); arrays broadcast,
    so that one Estimate can hold many simulated tables at once."""
    effect: float | np.ndarray
    parts: tuple

    @property
    def se(self):
        return np.sqrt(sum(v for v, _ in self.parts))

    @property
    def df(self):
        """Welch–Satterthwaite: (Σ v)² / Σ v²/df; infinite when every component is zero."""
        total = sum(v for v, _ in self.parts)
        denom = sum(np.asarray(v, float) ** 2 / d for v, d in self.parts)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.asarray(denom) > 0, np.asarray(total) ** 2 / np.where(denom > 0, denom, 1.0),
                            np.inf)

    def __sub__(self, other: "Estimate") -> "Estimate":
        """The difference of two independent estimates: variances add."""
        return Estimate(np.asarray(self.effect) - np.asarray(other.effect), self.parts + other.parts)


def linear(estimates: list[Estimate], weights) -> Estimate:
    """Σ wᵢ·estimateᵢ of independent estimates (e.g. a least-squares slope over n, or one n's
    deviation from the mean over n): each variance component scaled by wᵢ²."""
    weights = [float(w) for w in weights]
    if len(weights) != len(estimates):
        raise ValueError(f"{len(estimates)} estimates but {len(weights)} weights")
    effect = sum(w * np.asarray(e.effect) for e, w in zip(estimates, weights))
    parts = tuple((w * w * np.asarray(v), d) for e, w in zip(estimates, weights) for v, d in e.parts if w != 0)
    return Estimate(effect, parts)


def seed_mean(values, image_var, images: int) -> Estimate:
    """Mean over the last axis (training seeds) of per-seed values, each a mean over the same
    `images` test images with per-image variance image_var (same shape). One seed: the interval
    holds only test-image sampling (the claim says so)."""
    values = np.asarray(values, float)
    seeds = values.shape[-1]
    if seeds < 1 or images < 2:
        raise ValueError(f"need at least one seed and two test images (got {seeds} seeds, {images} images)")
    parts = [(np.mean(np.asarray(image_var, float), axis=-1) / images, images - 1)]
    if seeds >= 2:
        parts.insert(0, (values.var(axis=-1, ddof=1) / seeds, seeds - 1))
    return Estimate(values.mean(axis=-1), tuple(parts))


def plus_four_var(accuracy, images: int):
    """Per-image variance of a correct/incorrect outcome at the plus-four proportion (x+2)/(N+4)."""
    p = (np.asarray(accuracy, float) * images + 2) / (images + 4)
    return p * (1 - p)


def paired_var(diff_mean, diff_sd, images: int):
    """Per-image variance of d_i = a_i − q_i in [−1, 1] with the Agresti–Min pseudo-counts (half an
    image at +1, half at −1, one at 0) added to the N observed values: never zero."""
    mean, sd = np.asarray(diff_mean, float), np.asarray(diff_sd, float)
    total, squares = images * mean, (images - 1) * sd ** 2 + images * mean ** 2 + 1.0
    size = images + 2
    return (squares - total ** 2 / size) / (size - 1)


def paired_var_bound(acc_a, acc_q, images: int):
    """An upper bound of the per-image variance of a_i − q_i when its sd was not recorded:
    (sd_a + sd_q)² (Cauchy–Schwarz), at plus-four proportions."""
    return (np.sqrt(plus_four_var(acc_a, images)) + np.sqrt(plus_four_var(acc_q, images))) ** 2


def accuracy_mean(accuracies, images: int) -> Estimate:
    """Mean test accuracy over training seeds (last axis)."""
    return seed_mean(accuracies, plus_four_var(accuracies, images), images)


def paired_mean(diffs, diff_sd, images: int) -> Estimate:
    """Mean over training seeds (last axis) of a paired difference that one model gives both
    numbers of (Algorithm 1 − random at the same n, seed, k); diff_sd: per seed, the sd over test
    images of the per-image difference."""
    return seed_mean(diffs, paired_var(diffs, diff_sd, images), images)


# ---- tests -----------------------------------------------------------------------------------
@dataclass
class Test:
    __test__ = False     # not a pytest test class
    what: str
    effect: float
    lo: float
    hi: float
    margin: float
    direction: str       # "above" | "below": the side of the margin the claim puts the effect on
    outcome: str         # "supports" | "contradicts" | "neither"
    mde: float           # the distance beyond the margin detected with 80 % power
    se: float
    df: float

    def record(self) -> dict:
        """The fields claims.json carries (rounded; inf/NaN as None)."""
        return {k: _number(getattr(self, k)) for k in ("what", "effect", "lo", "hi", "margin", "direction",
                                                         "outcome", "mde")}


def _number(value):
    if isinstance(value, str):
        return value
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def critical(df, m: int, alpha: float = ALPHA):
    """The two-sided Student-t quantile of one of m Bonferroni intervals."""
    return stats.t.ppf(1 - alpha / (2 * m), df)


def bounds(est: Estimate, m: int, alpha: float = ALPHA):
    half = critical(est.df, m, alpha) * est.se
    return np.asarray(est.effect) - half, np.asarray(est.effect) + half


def outcome_codes(lo, hi, margin, direction: str):
    """+1 supports, −1 contradicts, 0 neither (vectorized)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    above, below = lo > margin, hi < margin
    ok, bad = (above, below) if direction == "above" else (below, above)
    return np.where(ok, 1, np.where(bad, -1, 0))


def verdict_codes(codes) -> np.ndarray:
    """Verdicts of many families at once: codes (..., m) -> array of verdict strings."""
    codes = np.asarray(codes)
    return np.where((codes == -1).any(axis=-1), CONTRADICTED,
                    np.where((codes == 1).all(axis=-1), SUPPORTED, INCONCLUSIVE))


def mde(se, df, m: int, alpha: float = ALPHA):
    """(t_{1−α/2m} + z_{power})·se: the true distance beyond the margin that an interval of this
    width puts wholly beyond it with probability `POWER`."""
    return (critical(df, m, alpha) + stats.norm.ppf(POWER)) * np.asarray(se)


def interval_test(what: str, est: Estimate, margin: float, direction: str, m: int, alpha: float = ALPHA) -> Test:
    """One test of a family of m: the estimate's Bonferroni interval against the margin."""
    lo, hi = bounds(est, m, alpha)
    code = int(outcome_codes(lo, hi, margin, direction))
    return Test(what, float(est.effect), float(lo), float(hi), float(margin), direction, OUTCOMES[code],
                float(mde(est.se, est.df, m, alpha)), float(est.se), float(est.df))


def order_statistic(rounds: int, m: int = 1, alpha: float = ALPHA) -> int | None:
    """j (1-based) such that [x_(j), x_(n−j+1)] of n sorted values covers their median with
    probability ≥ 1 − α/m: the largest j with 2·P(Binomial(n, ½) ≤ j − 1) ≤ α/m; None when no j
    qualifies (the same interval as scipy.stats.quantile_test(p=0.5).confidence_interval)."""
    j = np.arange(1, rounds // 2 + 1)
    ok = 2 * stats.binom.cdf(j - 1, rounds, 0.5) <= alpha / m
    return int(j[ok].max()) if ok.any() else None


def median_interval(values, m: int = 1, alpha: float = ALPHA):
    """(median, lo, hi) over the last axis: the distribution-free interval of a median from binomial
    order statistics at confidence ≥ 1 − α/m; (−inf, inf) with fewer than `min_rounds` values.
    Non-finite values are dropped (1-D input only then)."""
    values = np.asarray(values, float)
    if values.ndim == 1:
        values = values[np.isfinite(values)]
    if values.shape[-1] == 0 or not np.isfinite(values).all():
        raise ValueError("no finite values for a median interval" if values.shape[-1] == 0
                         else "non-finite values in a batch of median intervals")
    ordered = np.sort(values, axis=-1)
    median = np.median(ordered, axis=-1)
    j = order_statistic(ordered.shape[-1], m, alpha)
    if j is None:
        return median, np.full_like(median, -np.inf), np.full_like(median, np.inf)
    return median, ordered[..., j - 1], ordered[..., ordered.shape[-1] - j]


def min_rounds(m: int, alpha: float = ALPHA) -> int:
    """The fewest values for which median_interval is finite: 2·0.5ⁿ ≤ α/m."""
    return math.ceil(math.log2(2 * m / alpha))


def median_test(what: str, values, margin: float, direction: str, m: int, alpha: float = ALPHA) -> Test:
    """A median (e.g. of per-round time ratios) against the margin, with the order-statistic
    interval. se ≈ interval width / 2z (for the stated mde only); df = inf."""
    median, lo, hi = (float(v) for v in median_interval(values, m, alpha))
    code = int(outcome_codes(lo, hi, margin, direction))
    z = stats.norm.ppf(1 - alpha / (2 * m))
    se = (hi - lo) / (2 * z)
    return Test(what, median, lo, hi, float(margin), direction, OUTCOMES[code],
                float(mde(se, math.inf, m, alpha)), float(se), math.inf)


# ---- a claim's verdict -------------------------------------------------------------------------
def verdict(tests: list[Test]) -> str:
    return verdict_of([t.outcome for t in tests])


def verdict_of(outcomes: list[str]) -> str:
    """The verdict of a claim whose tests had these outcomes ("supports", ...); NOT RUN without."""
    if not outcomes:
        return NOT_RUN
    codes = [next(c for c, name in OUTCOMES.items() if name == o) for o in outcomes]
    return str(verdict_codes(codes))


def correction(m: int, alpha: float = ALPHA) -> str:
    if m == 1:
        return f"one test: a two-sided {100 * (1 - alpha):g} % interval"
    return (f"Bonferroni over {m} tests: each two-sided interval at {100 * (1 - alpha / m):.4g} % "
            f"confidence, family-wise α = {alpha:g}")


def detectable(tests: list[Test]) -> str:
    """For an INCONCLUSIVE claim: the smallest true effect beyond the margin that this run would
    have found with 80 % power, at its least precise undecided test."""
    open_tests = [t for t in tests if t.outcome == "neither"]
    if not open_tests:
        return ""
    worst = max(open_tests, key=lambda t: t.mde)
    sign = 1 if worst.direction == "above" else -1
    bound = "≥" if sign > 0 else "≤"
    if not math.isfinite(worst.mde):
        return f"{worst.what}: too few repeats for any interval at this confidence"
    return (f"with {100 * POWER:g} % power, true effects {bound} {worst.margin + sign * worst.mde:.3g} "
            f"(the margin {worst.margin:g} {'+' if sign > 0 else '−'} {worst.mde:.3g}) at {worst.what}, "
            f"the least precise of {len(open_tests)} undecided test(s)")
