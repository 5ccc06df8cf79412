"""E3: Algorithm 1 against random k-subsets across the expert grid (docs/study.md §5 E3; the
paper's figures 1-2): the selection table (softmoe evaluate), its figures and claims b and c, and
the paper's CIFAR/ImageNet headline numbers (judged only on a run of that dataset)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from softmoe.experiments import plots
from softmoe.statistics import inference, verdicts
from softmoe.study import layout, paper, stats
from softmoe.statistics.discrepancies import OTHER_SCOPE
from softmoe.experiments.unit import Claim, Evidence, Experiment, Figure as FigureSpec, Table, schema
from softmoe.study.stats import at_fraction, frac_label, mean_over_seeds

RANDOM_TOLERANCE = 1.0   # alg1_vs_random's `violation`: Alg1 more than this many random std below (observation)
HEADLINE = (0.5, 0.25, 0.125)    # (b1) the paper's headline fractions k = n/2, n/4, n/8
B1_MARGIN = -0.01        # (b1) non-inferiority: Alg1 − random ≥ −0.01 at every headline point
B1_REASON = ("non-inferiority, δ = 0.01: the paper itself reports a tie at n = 4, k = n/4 (.644 both) and its "
             "smallest positive gap is .047, so 'beats random' cannot mean 'above at every point'; it means "
             "'never clearly worse', and a tie must not count against it")
HEADLINE_MARGIN = -0.02  # the paper-scale headline checks: ours − paper ≥ −0.02

SELECTION_COLUMNS = schema("dataset n seed k k_frac method renormalize accuracy std z count images diff_sd",
                           "n seed k k_frac accuracy std z count images diff_sd",
                           "dataset n seed k method renormalize accuracy")


def _fig1(selection: pd.DataFrame, reference: str | None) -> Figure | str:
    means = mean_over_seeds(selection)
    variants = plots.variants(means)
    if not variants:
        return "selection.csv has no Algorithm 1 rows"
    full = means[means["method"] == "all"].groupby("n", as_index=False)[["accuracy", "ci"]].mean()
    palette = plots.n_palette(means["n"])
    ref = (paper.e3_mnist() if reference == "mnist" else None)
    fig, axes = plots.panels(len(variants), sharey=True)
    for ax, renorm in zip(axes, variants):
        alg = means[(means["method"] == "alg1") & (means["renormalize"] == renorm)]
        for n, rows in sorted(alg.groupby("n"), key=lambda item: item[0]):
            rows = pd.concat([rows, full[full["n"] == n].assign(k_frac=1.0)]).sort_values("k_frac")
            ax.plot(rows["k_frac"], rows["accuracy"], color=palette[int(n)], label=f"n={int(n)}",
                    marker="." if len(rows) < 20 else None)
            ax.fill_between(rows["k_frac"], rows["accuracy"] - rows["ci"], rows["accuracy"] + rows["ci"],
                            color=palette[int(n)], alpha=0.15, lw=0)
            if ref is not None and not renorm:
                pts = ref[(ref["n"] == n) & (ref["method"] != "random")]
                ax.scatter(pts["k_frac"], pts["accuracy"], marker="x", color=palette[int(n)], s=30, zorder=5)
        ax.set(title=plots.VARIANTS[renorm], xlabel="proportion of experts kept, k/n", ylabel="test accuracy",
               xlim=(0, 1.02))
    if ref is not None:
        axes[0].scatter([], [], marker="x", color="0.3", label="paper (MNIST, ±0.003)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(10, len(palette) + 1),
               fontsize="small")
    return fig


def _fig2(selection: pd.DataFrame, fractions: tuple[float, ...], reference: str | None) -> Figure | str:
    means = mean_over_seeds(selection)
    variants = plots.variants(means)
    if not variants:
        return "selection.csv has no Algorithm 1 rows"
    full = means[means["method"] == "all"].groupby("n", as_index=False)[["accuracy", "ci"]].mean()
    colours = dict(zip(sorted(fractions, reverse=True), plots.palette("deep", len(fractions))))
    ref = (paper.e3_mnist() if reference == "mnist" else None)
    fig, axes = plots.panels(len(variants), sharey=True)
    for ax, renorm in zip(axes, variants):
        rows = means[means["renormalize"] == renorm]
        ax.errorbar(full["n"], full["accuracy"], yerr=full["ci"], color="0.45", lw=2.5, marker="o", ms=5,
                    capsize=2, label="all experts (±95 %)")
        for frac, colour in colours.items():
            alg = at_fraction(rows[rows["method"] == "alg1"], frac).sort_values("n")
            rnd = at_fraction(rows[rows["method"] == "random"], frac).sort_values("n")
            ax.errorbar(alg["n"], alg["accuracy"], yerr=alg["ci"], color=colour, marker="o", ms=5, capsize=2,
                        label=f"Algorithm 1, k={frac_label(frac)} (±95 %)")
            ax.plot(rnd["n"], rnd["accuracy"], color=colour, ls="--", marker="s", ms=4,
                    label=f"random, k={frac_label(frac)} (±1 std)")
            std = rnd["std"].fillna(0)
            ax.fill_between(rnd["n"], rnd["accuracy"] - std, rnd["accuracy"] + std, color=colour, alpha=0.18, lw=0)
            if ref is not None and not renorm:
                for method, marker in (("alg1", "x"), ("random", "+")):
                    pts = ref[(ref["method"] == method) & ((ref["k_frac"] - frac).abs() < 1e-9)]
                    ax.scatter(pts["n"], pts["accuracy"], marker=marker, color=colour, s=40, zorder=5)
        if ref is not None and not renorm:
            pts = ref[ref["method"] == "all"]
            ax.scatter(pts["n"], pts["accuracy"], marker="x", color="0.45", s=40, zorder=5)
        plots.log2_axis(ax, means["n"])
        ax.set(title=plots.VARIANTS[renorm], xlabel="number of experts n (fixed budget)", ylabel="test accuracy")
    if ref is not None:
        axes[0].scatter([], [], marker="x", color="0.3", label="paper Alg1 / all (MNIST)")
        axes[0].scatter([], [], marker="+", color="0.3", label="paper random (MNIST)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize="small")
    return fig


def alg1_vs_random(selection: pd.DataFrame, renormalize: bool = False) -> pd.DataFrame:
    """Each Algorithm 1 row (with its z, computed by the evaluate step) next to the random rows
    at the same (n, seed, k)."""
    rows = selection[selection["renormalize"] == renormalize]
    keys = ["n", "seed", "k"]
    alg = rows[rows["method"] == "alg1"][keys + ["accuracy", "z"]]
    rnd = rows[rows["method"] == "random"][keys + ["accuracy", "std"]]
    pairs = alg.merge(rnd, on=keys, suffixes=("", "_random"))
    diff = pairs["accuracy"] - pairs["accuracy_random"]
    pairs["below_mean"] = diff < 0
    pairs["violation"] = diff < -RANDOM_TOLERANCE * pairs["std"].fillna(0.0)
    return pairs.sort_values(keys).reset_index(drop=True)


def headline_points(selection: pd.DataFrame) -> list[tuple[int, int, float]]:
    """(n, k, fraction) of every headline point with Algorithm 1 rows: k = n/2, n/4, n/8 as evaluated."""
    alg = selection[(selection["method"] == "alg1") & ~selection["renormalize"]]
    points = {}
    for n in sorted({int(n) for n in alg["n"]}):
        for frac in HEADLINE:
            k = stats.k_at(n, frac)
            if k is not None and ((alg["n"] == n) & (alg["k"] == k)).any():
                points.setdefault((n, k), frac)
    return [(n, k, frac) for (n, k), frac in points.items()]


def claim_alg1_beats_random(selection: pd.DataFrame, scope: dict, scale: dict | None = None) -> Claim:
    """(b1) Algorithm 1 − random at the same (n, seed, k), paired, at every headline point."""
    claim = Claim("b1", "Algorithm 1 is not worse than a random k-subset at any headline point "
                  "(k = n/2, n/4, n/8, every n)", scope, "b",
                  f"Algorithm 1 − random (same n, seed and k; mean over training seeds) ≥ {B1_MARGIN:g} at every "
                  "headline (n, k)", B1_REASON, scale=scale or {})
    claim.paper = "at or above random at every n and k = n/2, n/4, n/8 (figure 2; equal at n=4, k=n/4)"
    estimates, exact = [], True
    for n, k, frac in headline_points(selection):
        est, paired_exact = verdicts.paired(selection, "alg1", k, "random", k, n)
        if est is not None:
            estimates.append((f"n={n}, k={k} ({frac_label(frac)})", est))
            exact &= paired_exact
    tests = [inference.interval_test(what, est, B1_MARGIN, "above", len(estimates)) for what, est in estimates]
    if tests:
        worst = min(tests, key=lambda t: t.effect)
        claim.ours = (f"{sum(t.outcome == 'supports' for t in tests)} of {len(tests)} headline points support, "
                      f"{sum(t.outcome == 'contradicts' for t in tests)} contradict; smallest difference "
                      f"{worst.effect:+.3f} [{worst.lo:+.3f}, {worst.hi:+.3f}] at {worst.what}")
        seeds = int(selection["seed"].nunique())
        below = ""
        if "z" in selection:
            z = pd.to_numeric(alg1_vs_random(selection)["z"], errors="coerce")
            below = (f"observation, not a criterion: {int((z < -RANDOM_TOLERANCE).sum())} of {len(z)} (n, seed, k) "
                     "lie more than 1 random-seed std below random (under a tie about 1 in 6 would)")
        bound = "" if exact else "diff_sd missing: per-image variance bounded by (sd_alg1 + sd_random)²"
        claim.evidence = "; ".join(p for p in (below, bound, verdicts.seeds_note(seeds).removeprefix("; ")) if p)
        claim.numbers = {"points": len(tests), "supports": sum(t.outcome == "supports" for t in tests),
                         "contradicts": sum(t.outcome == "contradicts" for t in tests),
                         "smallest_effect": round(worst.effect, 5)}
    return verdicts.decide(claim, tests, "no Algorithm 1 rows with random rows at the same (n, k)")


# ---- (c) the gap to all experts shrinks ---------------------------------------------------------


def gap_fraction(selection: pd.DataFrame, fractions: list[float]) -> float | None:
    """k = n/8 if at least two n have it, else the next larger fraction (n/4, ...)."""
    ns = sorted(set(selection["n"]))
    for frac in sorted(fractions):
        if frac < 1 and sum(stats.k_at(int(n), frac) is not None for n in ns) >= 2:
            return frac
    return None


def gaps_to_all(selection: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Per n: all-experts accuracy minus Algorithm 1 accuracy at k = n * fraction (seed means)."""
    means = stats.mean_over_seeds(selection)
    full = means[means["method"] == "all"].groupby("n")["accuracy"].mean()
    alg = stats.at_fraction(means[(means["method"] == "alg1") & ~means["renormalize"]], fraction)
    both = pd.DataFrame({"all": full, "alg1": alg.set_index("n")["accuracy"]}).dropna()
    both["gap"] = both["all"] - both["alg1"]
    return both.reset_index().rename(columns={"index": "n"}).sort_values("n")


def claim_gap_shrinks(selection: pd.DataFrame, fractions: list[float], scope: dict,
                      scale: dict | None = None) -> Claim:
    """(b2) the gap all experts − Algorithm 1 at the smallest common fraction: larger at the
    smallest n than at the largest, and (with ≥ 3 n) falling per doubling of n."""
    claim = Claim("b2", "the gap from Algorithm 1 to all experts shrinks as n grows (implicit bias)", scope, "b",
                  "gap(smallest n) − gap(largest n) > 0 and, with ≥ 3 n, the least-squares slope of the gap "
                  "over log₂ n < 0, at the smallest k fraction evaluated for ≥ 2 n",
                  "a trend, not a value: the paper's gap at k = n/8 falls from .584 (n = 8) to .091 (n = 512); "
                  "any fall beyond this run's noise supports it (margin 0)", scale=scale or {})
    claim.paper = "MNIST k = n/8: gap .584 at n=8 → .091 at n=512 (figure 2, read off the plot)"
    frac = gap_fraction(selection, fractions)
    gaps = []
    for n in sorted({int(n) for n in selection["n"]}) if frac is not None else []:
        k = stats.k_at(n, frac)
        est = verdicts.paired(selection, "all", n, "alg1", k, n)[0] if k is not None else None
        if est is not None:
            gaps.append((n, est))
    if len(gaps) < 2:
        return verdicts.not_run(claim, "fewer than two n with Algorithm 1 and all-experts rows at a common fraction")
    label = frac_label(frac)
    claim.statement = f"the gap from Algorithm 1 (k = {label}) to all experts shrinks as n grows (implicit bias)"
    (n0, first), (n1, last) = gaps[0], gaps[-1]
    m = 2 if len(gaps) >= 3 else 1
    tests = [inference.interval_test(f"gap(n={n0}) − gap(n={n1}) at k = {label}", first - last, 0.0, "above", m)]
    if m == 2:
        x = np.log2([n for n, _ in gaps])
        w = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
        slope = inference.linear([e for _, e in gaps], w)
        tests.append(inference.interval_test(f"slope of the gap per doubling of n ({len(gaps)} n)", slope, 0.0,
                                             "below", m))
    claim.ours = (f"gap {float(first.effect):.3f} at n={n0} → {float(last.effect):.3f} at n={n1}"
                  + (f"; slope {tests[1].effect:+.4f} per doubling" if m == 2 else ""))
    claim.evidence = (", ".join(f"n={n}: {float(e.effect):.3f}" for n, e in gaps)
                      + "; per-image variance of all − Algorithm 1 bounded by (sd_all + sd_alg1)²")
    claim.numbers = {"gap_first": round(float(first.effect), 5), "gap_last": round(float(last.effect), 5)}
    return verdicts.decide(claim, tests)


# ---- the paper's other datasets ----------------------------------------------------------------
def claims_elsewhere(dataset_here: str, selection: pd.DataFrame, scale: dict | None = None) -> list[Claim]:
    """The paper's CIFAR and ImageNet headline numbers at the paper's scale: judged when this run is
    on that dataset (ours − paper ≥ −0.02 at every headline number), otherwise NOT RUN with the
    params file and command that run them."""
    out = []
    for key, experiment, items, dataset, config in OTHER_SCOPE[:3]:
        ref = paper.headlines(dataset)
        command = f"snakemake --cores all --configfile {config}"
        claim = Claim(key, f"{experiment} ({items}): " + "; ".join(ref["what"]),
                      {"dataset": dataset, "device": "GPU cluster", "model": "see " + config},
                      "c" if dataset == "imagenet" else "b",
                      f"ours − paper ≥ {HEADLINE_MARGIN:g} at every headline number (mean over training seeds)",
                      "a reproduction at the paper's scale should reach its headline accuracies within two "
                      "points; above them is no discrepancy")
        claim.paper = ", ".join(f"{a:.3f}" for a in ref["accuracy"])
        if dataset_here != dataset:
            claim.evidence = f"not run here: `{command}` (GPU cluster)"
            claim.scale = {"config": config, "command": command}
            out.append(verdicts.not_run(claim, f"not run here (the paper's {dataset} scale needs a GPU cluster): "
                                               f"`{command}`"))
            continue
        claim.scale = scale or {}
        estimates = []
        for r in ref.itertuples():
            est = verdicts.accuracy(selection, r.method, int(r.n), int(r.k))
            if est is not None:
                estimates.append((f"{r.method} n={int(r.n)}, k={int(r.k)}: ours − paper {r.accuracy:.3f}",
                                  inference.Estimate(float(est.effect) - r.accuracy, est.parts), float(est.effect)))
        tests = [inference.interval_test(w, e, HEADLINE_MARGIN, "above", len(estimates)) for w, e, _ in estimates]
        claim.ours = ", ".join(f"{ours:.3f}" for _, _, ours in estimates) or "–"
        out.append(verdicts.decide(claim, tests, "none of the paper's headline points is in this run's grid"))
    return out


# ---- the step ----------------------------------------------------------------------------------------


def _reference(ev: Evidence) -> str | None:
    return paper.REFERENCE.get(ev.study.dataset)


SELECTION = Table("selection", SELECTION_COLUMNS, step="evaluate",
                  source=layout.EVAL, runs=layout.runs, required=True)
EXPERIMENT = Experiment(
    key="E3", title="Algorithm 1 vs random across the expert grid", paper="figures 1-2",
    tables=(SELECTION,),
    figures=(
        FigureSpec("fig1_selection_vs_fraction", "Accuracy vs proportion of experts kept (Algorithm 1)",
                   "Test accuracy when each input runs only the k experts chosen by Algorithm 1, against "
                   "k/n, one curve per n (paper figure 1; mean over training seeds, band = 95 % interval; none "
                   "for the single-expert control n = 1, which has no k < n); "
                   "k/n = 1 is the all-experts model; crosses: the paper's MNIST points (±0.003). Left: the "
                   "paper's Algorithm 1 (combine weights not renormalized); right: the renormalized ablation.",
                   (SELECTION.name,), lambda ev: _fig1(ev.frames[SELECTION.name], _reference(ev))),
        FigureSpec("fig2_selection_vs_n", "Accuracy vs number of experts at a fixed parameter budget",
                   "Algorithm 1 (solid, error bars = 95 % interval over training seeds and test images) against "
                   "a random k-subset per input (dashed, band = ±1 std over the random seeds) and all experts "
                   "(gray), one colour per k = n·fraction (paper figure 2; x / +: the paper's MNIST Algorithm 1 "
                   "and random points). Left: the paper's Algorithm 1; right: the renormalized ablation.",
                   (SELECTION.name,),
                   lambda ev: _fig2(ev.frames[SELECTION.name], ev.study.evaluate.fractions, _reference(ev))),
    ),
    claims=(lambda ev: claim_alg1_beats_random(ev.frames[SELECTION.name], ev.scope, ev.scale),
            lambda ev: claim_gap_shrinks(ev.frames[SELECTION.name], ev.study.evaluate.fractions, ev.scope, ev.scale),
            lambda ev: claims_elsewhere(ev.study.dataset, ev.frames[SELECTION.name], ev.scale)),
)
