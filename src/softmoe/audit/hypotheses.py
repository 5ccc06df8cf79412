"""Hypotheses tested by runs (docs/hypotheses.md): each hypothesis of params.yaml compared with
the main grid on the quantity it should explain, written to metrics/hypotheses.json.

For hypothesis h with quantity q (one accuracy of the selection table: method at k or k = n*k_frac),
every run (n, seed) is paired with the grid's model of the same (n, seed):
- effect = mean over pairs of (variant − grid) on q, with its 95 % interval: training-seed spread
  of the paired differences (m pairs, m − 1 df) plus test-image sampling (the per-image variance of
  the difference taken as var_variant + var_grid, `image_var`, N − 1 df; softmoe.statistics.inference.seed_mean,
  Welch–Satterthwaite df). With one pair the interval holds only the test images.
- discrepancy = mean over pairs of (paper − grid) where the paper has q at that n
  (softmoe.study.paper), the paper's reading error (±0.003 for plots, uniform) added to its variance.
- prediction: what h says the gap moves by. For a change of recipe (authors' loop, epochs,
  renormalization) that is the effect itself. For a training subset of N of the M images it is
  the stated scale model "accuracy is linear in log2(training images)": the effect of M → N,
  per halving, carried to the paper's P images: −effect · log2(P/M) / log2(M/N) (0 when M = P).
- explained share = prediction / discrepancy on the pairs where the paper has the quantity, its
  95 % interval from 200,000 normal draws of the pair (the two share the grid's accuracy: their
  covariance is taken from the pairs and the test images), reported only when the
  discrepancy's interval excludes 0.

`python -m softmoe.audit.hypotheses --write dvc.yaml` rewrites dvc.yaml's list of trained runs
(the `hypothesis` stage's foreach) from params.yaml; `--check dvc.yaml` compares.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from softmoe.base import atomic
from softmoe.statistics import inference
from softmoe.study import layout, paper, stats
from softmoe.workflow import tables
from softmoe.base.errors import UserError
from softmoe.study.params import Hypothesis, Study
from softmoe.experiments.e3_calibration import CALIBRATION
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.hypotheses import HYPOTHESES

PLOT_ERR = 0.003          # ± reading error of a number read off the paper's plots (softmoe.study.paper)
SHARE_DRAWS = 200_000
ALPHA = inference.ALPHA


# ---- the rows of one quantity ------------------------------------------------------------------
def quantity_rows(frame: pd.DataFrame | None, h: Hypothesis, renormalize: bool) -> pd.DataFrame:
    """(n, seed, accuracy, images) of h's quantity in a selection-like table, at h's n and seeds."""
    cols = ["n", "seed", "accuracy", "images"]
    if frame is None or frame.empty:
        return pd.DataFrame(columns=cols)
    q = h.quantity
    rows = frame[(frame["method"] == q.method) & (frame["renormalize"] == renormalize)
                 & frame["n"].isin(h.experts) & frame["seed"].isin(h.seeds)]
    if q.method == "all":
        rows = rows[rows["k"] == rows["n"]]
    elif q.k is not None:
        rows = rows[rows["k"] == q.k]
    else:
        rows = stats.at_fraction(rows, q.k_frac)
    out = rows[cols].astype({"n": int, "seed": int})
    if out.duplicated(["n", "seed"]).any():
        raise UserError(f"hypothesis {h.name}: more than one row per (n, seed) for {q.label}; "
                        "rerun `softmoe tabulate` (a table holds a run twice)")
    return out


def variant_frame(h: Hypothesis, frames: dict) -> tuple[pd.DataFrame | None, bool]:
    """The table h's variant rows come from, and the renormalize mode they are read at."""
    mode = bool(h.evaluate["renormalize"][0]) if "renormalize" in h.evaluate else h.quantity.renormalize
    if h.runs_from == "grid":
        return frames[SELECTION.name], mode
    if h.runs_from == "calibration":
        return frames.get(CALIBRATION.name), mode
    runs = frames.get(HYPOTHESES.name)
    return (None if runs is None else runs[runs["name"] == h.name]), mode


def variant_path(h: Hypothesis, dataset: str, n: int, seed: int) -> str:
    keys = {"dataset": dataset, "name": h.name, "n": n, "seed": seed}
    if h.runs_from == "train":
        return layout.HYPOTHESIS.format(**keys)
    if h.runs_from == "calibration":
        return layout.CALIBRATION.format(**keys)
    return layout.EVAL.format(**keys)


def paper_values(dataset: str, h: Hypothesis) -> dict[int, tuple[float, float]]:
    """{n: (the paper's value of h's quantity, its ± reading error)} where the paper gives one."""
    ref = paper.REFERENCE.get(dataset)
    if ref is None or h.quantity.renormalize:      # the paper reports no renormalized rows
        return {}
    points = paper.headlines(ref)
    points = points[(points["method"] == h.quantity.method) & points["n"].notna()]
    out = {}
    for n in h.experts:
        at = points[points["n"] == n]
        if h.quantity.method != "all":
            frac = h.quantity.k / n if h.quantity.k is not None else h.quantity.k_frac
            at = at[np.isclose(at["k_frac"].astype(float), frac)]
        if len(at):
            out[n] = (float(at["accuracy"].iloc[0]), PLOT_ERR if at["source"].iloc[0] == paper.PLOT else 0.0)
    return out


# ---- the numbers -------------------------------------------------------------------------------
def image_var(variant, grid, images: int):
    """Per-image variance of variant_i − grid_i for two models scored on the same images, whose
    per-image outcomes are not recorded: var_variant + var_grid (plus-four proportions), i.e. the
    outcomes taken as uncorrelated. Two models of one architecture tend to fail on the same
    images (positive correlation), so this overstates it in practice; the worst case
    (sd_v + sd_g)², inference.paired_var_bound, would hide any effect under ±0.05 on 1,000 images."""
    return inference.plus_four_var(variant, images) + inference.plus_four_var(grid, images)


def _interval(est: inference.Estimate) -> dict:
    lo, hi = inference.bounds(est, 1, ALPHA)
    return {"estimate": _num(est.effect), "lo": _num(lo), "hi": _num(hi), "se": _num(est.se),
            "df": _num(est.df)}


def _num(value) -> float | None:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def compare(pairs: pd.DataFrame, paper_at: dict, scale: float) -> dict:
    """Effect, discrepancy, prediction and explained share of one hypothesis from its pairs
    (columns n, variant, grid, images); scale: the prediction's factor on the effect."""
    images = int(pairs["images"].min())
    v, g = pairs["variant"].to_numpy(float), pairs["grid"].to_numpy(float)
    effect = inference.seed_mean(v - g, image_var(v, g, images), images)
    out = {"pairs": len(pairs), "images": images, "variant": _num(v.mean()), "grid": _num(g.mean()),
           "effect": _interval(effect),
           "prediction": _interval(inference.Estimate(scale * effect.effect,
                                                      tuple((scale ** 2 * var, df) for var, df in effect.parts)))}
    known = pairs[pairs["n"].isin(list(paper_at))]
    if known.empty:
        return {**out, "paper": None, "discrepancy": None, "explained_share": None,
                "share_note": "the paper gives no number for this quantity at these n"}
    ref = np.array([paper_at[int(n)][0] for n in known["n"]])
    err = max(paper_at[int(n)][1] for n in known["n"])
    gk = known["grid"].to_numpy(float)
    gap = inference.seed_mean(ref - gk, inference.plus_four_var(gk, images), images)
    gap = inference.Estimate(gap.effect, gap.parts + (((err ** 2) / 3, 1e9),) if err else gap.parts)
    out.update(paper=_num(ref.mean()), discrepancy=_interval(gap))
    lo, hi = inference.bounds(gap, 1, ALPHA)
    if lo <= 0 <= hi:
        return {**out, "explained_share": None,
                "share_note": "the gap to the paper is within its interval of 0: nothing to explain"}
    out["explained_share"] = explained_share(known, ref, err, images, scale)
    out["share_note"] = "prediction / discrepancy; 1 explains the whole gap, < 0 widens it"
    return out


def explained_share(known: pd.DataFrame, ref: np.ndarray, err: float, images: int, scale: float) -> dict:
    """prediction / discrepancy on the pairs where the paper has the quantity, with the 95 %
    interval of SHARE_DRAWS normal draws of the pair (prediction, discrepancy): their covariance
    is the pairs' sample covariance / m plus the test images' (both contain −grid)."""
    v, g = known["variant"].to_numpy(float), known["grid"].to_numpy(float)
    e, c, m = v - g, ref - g, len(known)
    cov = np.cov(np.vstack([e, c]), ddof=1) / m if m >= 2 else np.zeros((2, 2))
    grid_var = float(np.mean(inference.plus_four_var(g, images))) / images
    cov = cov + np.array([[float(np.mean(image_var(v, g, images))) / images, grid_var],
                          [grid_var, grid_var + err ** 2 / 3]])
    cov = np.diag([scale, 1.0]) @ cov @ np.diag([scale, 1.0])
    mean = np.array([scale * e.mean(), c.mean()])
    draws = np.random.default_rng(0).multivariate_normal(mean, cov, SHARE_DRAWS)
    lo, hi = np.quantile(draws[:, 0] / draws[:, 1], [ALPHA / 2, 1 - ALPHA / 2])
    return {"estimate": _num(mean[0] / mean[1]), "lo": _num(lo), "hi": _num(hi), "pairs": m}


def scale_factor(h: Hypothesis, variant: pd.DataFrame, dataset: str) -> tuple[float, str]:
    """The prediction's factor on the effect and the model that gives it (module doc)."""
    subset = h.data.get("train_subset")
    if subset is None:
        return 1.0, "the variant's recipe is the paper's: the gap moves by the effect"
    full = int(variant["full_train_images"].iloc[0]) if "full_train_images" in variant else None
    ref = paper.SETTING.get(paper.REFERENCE.get(dataset, ""), {}).get("train_size")
    if not full or not ref or full <= subset:
        return 0.0, "no larger training set to carry the effect to"
    factor = -math.log2(ref / full) / math.log2(full / subset)
    return factor, (f"accuracy linear in log2(training images): the effect of {full:,} -> {subset:,} "
                    f"images carried to the paper's {ref:,} (factor {factor:+.3f})")


def hypothesis_entry(h: Hypothesis, study: Study, frames: dict) -> dict:
    """One hypothesis of metrics/hypotheses.json (docs/hypotheses.md, "The JSON")."""
    entry = {"name": h.name, "description": " ".join(h.description.split()), "runs_from": h.runs_from,
             "overrides": {k: dict(v) for k, v in (("train", h.train), ("evaluate", h.evaluate), ("data", h.data)) if v},
             "quantity": {k: v for k, v in vars(h.quantity).items() if v is not None},
             "experts": list(h.experts), "seeds": list(h.seeds)}
    if study.dataset not in h.datasets:
        return {**entry, "status": "not run", "why": f"applies to {list(h.datasets)}, not {study.dataset}",
                "runs": []}
    source, mode = variant_frame(h, frames)
    variant = quantity_rows(source, h, mode)
    grid = quantity_rows(frames[SELECTION.name], h, h.quantity.renormalize)
    pairs = variant.merge(grid, on=["n", "seed"], suffixes=("_variant", "_grid"))
    pairs = pairs.rename(columns={"accuracy_variant": "variant", "accuracy_grid": "grid"})
    pairs["images"] = pairs[["images_variant", "images_grid"]].min(axis=1)
    wanted = {(n, s) for n in h.experts for s in h.seeds}
    have = {(int(n), int(s)) for n, s in zip(pairs["n"], pairs["seed"])}
    entry["runs"] = [{"n": int(r.n), "seed": int(r.seed), "path": variant_path(h, study.dataset, int(r.n), int(r.seed)),
                      "grid_path": layout.EVAL.format(dataset=study.dataset, n=int(r.n), seed=int(r.seed)),
                      "variant": _num(r.variant), "grid": _num(r.grid)}
                     for r in pairs.sort_values(["n", "seed"]).itertuples()]
    entry["missing"] = [{"n": n, "seed": s} for n, s in sorted(wanted - have)]
    if pairs.empty:
        return {**entry, "status": "not run",
                "why": f"no (n, seed) of {sorted(wanted)} has both a variant and a grid row of {h.quantity.label}"}
    factor, model = scale_factor(h, source if source is not None else pd.DataFrame(), study.dataset)
    result = compare(pairs, paper_values(study.dataset, h), factor)
    result["prediction"]["model"] = model
    return {**entry, "status": "tested", **result}


def write(study: Study, tables_dir: Path, out: Path) -> dict:
    """metrics/hypotheses.json from the selection, calibration and hypotheses tables."""
    frames = {name: tables.read(Path(tables_dir), name) for name in (SELECTION.name, CALIBRATION.name, HYPOTHESES.name)}
    report = {"dataset": study.dataset, "reference": paper.REFERENCE.get(study.dataset), "alpha": ALPHA,
              "intervals": "95 %, over training seeds and test images (docs/hypotheses.md)",
              "hypotheses": [hypothesis_entry(h, study, frames) for h in study.hypotheses.values()]}
    atomic.write_json(Path(out), report)
    return report


# ---- dvc.yaml's list of trained runs -----------------------------------------------------------
FOREACH = re.compile(r"(?ms)^(  hypothesis:\n    foreach:[^\n]*\n)(.*?)(^    do:)")


def dvc_lines(study: Study) -> str:
    """The foreach entries of dvc.yaml's `hypothesis` stage: one per trained run."""
    return "".join(f"      - {{name: {r['name']}, n: {r['n']}, seed: {r['seed']}}}\n"
                   for r in layout.hypothesis_runs(study))


def _main(argv=None) -> int:
    from softmoe.study import params
    parser = argparse.ArgumentParser(prog="python -m softmoe.audit.hypotheses", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", metavar="DVC_YAML")
    mode.add_argument("--write", metavar="DVC_YAML")
    args = parser.parse_args(argv)
    path = Path(args.check or args.write)
    text = path.read_text()
    found = FOREACH.search(text)
    if not found:
        print(f"{path}: no `hypothesis:` stage with a foreach list", file=sys.stderr)
        return 1
    want = dvc_lines(params.load_study(args.params))
    if args.write:
        atomic.write_text(path, text[:found.start(2)] + want + text[found.end(2):])
        return 0
    if found.group(2) != want:
        print(f"{path}: the hypothesis runs differ from {args.params}; run "
              f"`python -m softmoe.audit.hypotheses --write {path}`. Expected:\n{want}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
