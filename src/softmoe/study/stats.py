"""The small analyses shared by the steps that write and read the results tables: k for a
fraction, means over training seeds with their intervals, z, final losses. One definition each
(docs/study.md §4 for z and the intervals)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

Z95 = 1.959964          # two-sided 95 % normal quantile
FINAL_SHARE = 0.1       # a synthetic run's final loss: the mean over its last 10 % of steps


def k_for(n: int, fraction: float) -> int:
    """The one rounding rule of k for a fraction of n experts: floor(n * fraction), at least 1."""
    return max(1, math.floor(n * fraction))


def k_at(n: int, fraction: float) -> int | None:
    """k = k_for(n, fraction) as Algorithm 1 is evaluated at it; None where n * fraction < 1 or
    k = n (the fraction has no k of its own at this n)."""
    if n * fraction < 1:
        return None
    k = k_for(n, fraction)
    return k if k < n else None


def k_values(n: int, fractions, absolute=(), every_k: bool = False) -> list[int]:
    """Every k evaluated for a model with n experts: the fractions, the absolute k < n, and with
    every_k all of 1..n-1; ascending, without repeats."""
    ks = {k for f in fractions if (k := k_at(n, f)) is not None}
    ks |= {k for k in absolute if 1 <= k < n}
    if every_k:
        ks |= set(range(1, n))
    return sorted(ks)


def latency_ks(n: int, fractions) -> list[int]:
    """The k timed by the latency steps: n and k_for(n, f) for every fraction, descending."""
    return sorted({n} | {k_for(n, f) for f in fractions}, reverse=True)


def frac_label(fraction: float) -> str:
    """0.25 -> 'n/4' (the paper's notation); other fractions as n·f."""
    names = {1.0: "n", 0.75: "3n/4", 0.5: "n/2", 0.25: "n/4", 0.125: "n/8"}
    return names.get(round(fraction, 6), f"n·{fraction:g}")


def z_score(accuracy, mean, std) -> float:
    """(accuracy - mean) / std with IEEE semantics: ±inf if std == 0 and they differ, NaN if equal."""
    diff, std = float(accuracy) - float(mean), float(std)
    if std == 0.0:
        return math.nan if diff == 0.0 else math.copysign(math.inf, diff)
    return diff / std


def half_width(accuracy, seed_std, seeds, images) -> float:
    """Half-width of the 95 % interval of a mean test accuracy over `seeds` training seeds, each
    evaluated on the same `images` test images: training randomness (the spread over seeds,
    std/√seeds) and test-set sampling (binomial, √(p(1-p)/images), the same as a bootstrap over
    test images) added in quadrature. One seed: test-set sampling only."""
    p = float(accuracy)
    sampling = p * (1 - p) / images if images and images > 0 else 0.0
    training = (float(seed_std) ** 2 / seeds) if seeds and seeds > 1 and not pd.isna(seed_std) else 0.0
    return Z95 * math.sqrt(sampling + training)


def mean_over_seeds(selection: pd.DataFrame) -> pd.DataFrame:
    """Selection rows averaged over training seeds: accuracy, std (of the random seeds), count,
    seeds, seed_std (the spread of the accuracy over training seeds), images, k_frac and `ci`,
    the half-width of the 95 % interval of the mean (`half_width`)."""
    keys = ["n", "k", "method", "renormalize"]
    out = selection.groupby(keys, as_index=False).agg(
        accuracy=("accuracy", "mean"), std=("std", "mean"), count=("count", "mean"),
        seeds=("seed", "nunique"), seed_std=("accuracy", "std"), images=("images", "min"))
    out["k_frac"] = out["k"] / out["n"]
    out["ci"] = [half_width(a, s, m, i) for a, s, m, i in
                 zip(out["accuracy"], out["seed_std"], out["seeds"], out["images"])]
    return out


def at_fraction(frame: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Rows whose k is the evaluated k = n * fraction."""
    ks = frame["n"].map(lambda n: k_at(int(n), fraction))
    return frame[frame["k"] == ks]


def final_losses(loss: pd.DataFrame) -> pd.DataFrame:
    """Per synthetic (variance, tokens, n): the mean loss over the last FINAL_SHARE of steps of
    each training seed's run (a `seed` column when the table has one), averaged over the seeds."""
    keys = [k for k in ("variance", "tokens", "n") if k in loss.columns]
    runs = [*keys, "seed"] if "seed" in loss.columns else keys
    rows = []
    for key, g in loss.sort_values("step").groupby(runs):
        rows.append({**dict(zip(runs, key)), "final_loss": final_loss(g["loss"])})
    per_run = pd.DataFrame(rows, columns=[*runs, "final_loss"])
    return per_run.groupby(keys, as_index=False)["final_loss"].mean()[[*keys, "final_loss"]]


def final_loss(losses) -> float:
    """Mean of the last FINAL_SHARE of a run's per-step losses (in step order)."""
    values = np.asarray(losses, dtype=float)
    return float(values[-max(1, int(len(values) * FINAL_SHARE)):].mean())


def constant_predictor_loss(variance: float, dim: int = 10) -> float:
    """MSE of the best constant prediction of ‖x‖₂ for x ~ N(0, variance·I_dim): Var‖x‖₂ =
    variance · (dim − μ²), μ = √2 Γ((dim+1)/2) / Γ(dim/2) the mean of a chi distribution."""
    mu = math.sqrt(2) * math.exp(math.lgamma((dim + 1) / 2) - math.lgamma(dim / 2))
    return variance * (dim - mu * mu)


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); nan if either side is constant."""
    rx, ry = pd.Series(list(x)).rank(), pd.Series(list(y)).rank()
    if rx.nunique() < 2 or ry.nunique() < 2:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])
