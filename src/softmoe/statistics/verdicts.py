"""What the claims' verdicts are built from (docs/study.md §4; the claims of softmoe.experiments):
the estimates of the results tables (means over training seeds, paired where one model gives
both numbers, timing ratios), the interval tests of softmoe.statistics.inference on them, the scale a
verdict was reached at next to the paper's, and whether a benchmark file measured today's code."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from softmoe.provenance import deps
from softmoe.statistics import inference
from softmoe.study import paper
from softmoe.statistics.inference import Estimate, Test

STEPS_MATCH = 0.95           # a run with at least 95 % of the paper's optimizer steps is at its scale


# ---- a claim's verdict from its tests ---------------------------------------------------------------
def decide(claim, tests: list[Test], why_not: str = ""):
    """Set a claim's tests, verdict, correction and (INCONCLUSIVE) detectable; without tests the
    claim is NOT RUN with `why_not`."""
    if not tests:
        return not_run(claim, why_not or "no tests could be formed from this run's tables")
    claim.tests = [t.record() for t in tests]
    claim.verdict = inference.verdict(tests)
    claim.alpha = inference.ALPHA
    claim.correction = inference.correction(len(tests))
    claim.detectable = inference.detectable(tests) if claim.verdict == inference.INCONCLUSIVE else ""
    claim.why = ""
    return claim


def not_run(claim, why: str):
    claim.verdict, claim.why, claim.tests, claim.correction, claim.detectable = inference.NOT_RUN, why, [], "", ""
    return claim


# ---- estimates from the selection table ----------------------------------------------------------
def per_seed(selection: pd.DataFrame, method: str, n: int, k: int, renormalize: bool = False) -> pd.DataFrame:
    """The rows of one (method, n, k, renormalize), one per training seed, indexed by seed."""
    rows = selection[(selection["method"] == method) & (selection["n"] == n) & (selection["k"] == k)
                     & (selection["renormalize"] == renormalize)]
    return rows.drop_duplicates("seed").set_index("seed").sort_index()


def images_of(rows: pd.DataFrame) -> int:
    images = pd.to_numeric(rows["images"], errors="coerce").dropna()
    if images.empty or images.min() < 2:
        raise ValueError("selection rows without a test-image count (column images)")
    return int(images.min())


def accuracy(selection: pd.DataFrame, method: str, n: int, k: int) -> Estimate | None:
    """Mean accuracy of one (method, n, k) over training seeds; None without rows."""
    rows = per_seed(selection, method, n, k)
    if rows.empty:
        return None
    return inference.accuracy_mean(rows["accuracy"].to_numpy(float), images_of(rows))


def paired(selection: pd.DataFrame, first: str, k_first: int, second: str, k_second: int, n: int
           ) -> tuple[Estimate | None, bool]:
    """first − second at the same (n, seed), e.g. Algorithm 1 − random at the same k, or all
    experts − Algorithm 1: (estimate, exact). Exact when the rows carry diff_sd for this pair
    (Algorithm 1 − random, written by the evaluate step); otherwise the per-image variance is
    bounded by (sd₁ + sd₂)² (inference.paired_var_bound). None without common seeds."""
    a, b = per_seed(selection, first, n, k_first), per_seed(selection, second, n, k_second)
    seeds = a.index.intersection(b.index)
    if seeds.empty:
        return None, False
    a, b = a.loc[seeds], b.loc[seeds]
    diffs = (a["accuracy"] - b["accuracy"]).to_numpy(float)
    images = min(images_of(a), images_of(b))
    sd = a["diff_sd"].to_numpy(float) if "diff_sd" in a else np.full(len(seeds), np.nan)
    if first == "alg1" and second == "random" and k_first == k_second and np.isfinite(sd).all():
        return inference.paired_mean(diffs, sd, images), True
    bound = inference.paired_var_bound(a["accuracy"].to_numpy(float), b["accuracy"].to_numpy(float), images)
    return inference.seed_mean(diffs, bound, images), False


def seeds_note(seeds: int) -> str:
    return ("" if seeds >= 2 else
            "; one training seed: the intervals hold test-image sampling only, not training randomness")


# ---- timing ratios ---------------------------------------------------------------------------------
def round_ratios(rounds: pd.DataFrame | None, config: str, n: int, k: int, batch: int) -> np.ndarray | None:
    """The per-round time ratios (k to the k = n call of the same round) of one configuration,
    batch and k from latency_rounds.csv; None when the latency step did not record them."""
    if rounds is None or rounds.empty:
        return None
    at = rounds[(rounds["config"] == config) & (rounds["n"] == n) & (rounds["k"] == k) & (rounds["batch"] == batch)]
    values = pd.to_numeric(at["ratio_to_full"], errors="coerce").dropna().to_numpy(float)
    return values if len(values) else None


def ratio_test(what: str, row, full, margin: float, m: int, rounds: np.ndarray | None = None) -> Test:
    """A time ratio (row's k to the k = n row `full` of the same configuration and batch) below the
    margin. With per-round ratios (`rounds`, round_ratios): the order-statistic interval of their
    median. Otherwise a log-scale interval from each median's quartiles:
    se(log median) ≈ 1.253·(IQR/1.349)/(median·√repeats)."""
    if rounds is not None and len(rounds) > 0:
        return inference.median_test(what + f" (median of {len(rounds)} rounds)", rounds, margin, "below", m)
    parts = []
    for r in (row, full):
        iqr, med, reps = float(r["q75_ms"]) - float(r["q25_ms"]), float(r["median_ms"]), int(r["repeats"])
        if not (med > 0 and reps >= 2 and iqr >= 0):
            raise ValueError(f"latency row {what}: needs median_ms > 0, quartiles and ≥ 2 repeats")
        parts.append(((1.2533 * iqr / 1.349 / med) ** 2 / reps, reps - 1))
    log_ratio = Estimate(math.log(float(row["median_ms"]) / float(full["median_ms"])), tuple(parts))
    t = inference.interval_test(what, log_ratio, math.log(margin), "below", m)
    lo, hi, effect = math.exp(t.lo), math.exp(t.hi), math.exp(t.effect)
    mde = margin - margin * math.exp(-t.mde)            # the ratio below the margin found with 80 % power
    return Test(what, effect, lo, hi, margin, "below", t.outcome, mde, t.se, t.df)


# ---- freshness of a benchmark file -------------------------------------------------------------------
def stale(bench: dict) -> str | None:
    """Why a benchmark file does not measure today's code ("stale: measured at <commit>"), or
    None when every file in its code digest (softmoe.bench.suite.code_digest) is today's."""
    code = bench.get("code")
    when = bench.get("commit") or f"an unrecorded commit ({bench.get('created', 'date unknown')})"
    if not isinstance(code, dict) or not code:
        return f"stale: measured at {when}; the file carries no code digest to check it against today's code"
    changed = deps.changed_files(code)
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        return f"stale: measured at {when}; changed since: {shown} (rerun benchmarks/gpu-keep.sh on a GPU)"
    return None


# ---- the scale a verdict was reached at ---------------------------------------------------------------
def grid_scale(study, training: pd.DataFrame, selection: pd.DataFrame | None, device: str) -> dict:
    """This run's image grid next to the paper's setting (paper.SETTING): training and test images,
    training seeds, optimizer steps, device and model; at_paper_scale with the shortfalls."""
    ps = paper.SETTING.get(paper.REFERENCE.get(study.dataset), {})
    entry = study.dataset_entry
    train_images = entry.train_size if entry.train_size is not None else ps.get("train_size")
    test_images = (images_of(selection) if selection is not None and len(selection) else
                   entry.test_size if entry.test_size is not None else ps.get("test_size"))
    steps = _int(pd.to_numeric(training["steps"], errors="coerce").max()) if "steps" in training else None
    params = pd.to_numeric(training.get("params_total"), errors="coerce") if "params_total" in training else None
    model = f"{study.model.kind}, n = {', '.join(str(int(n)) for n in sorted(set(training['n'])))}"
    if params is not None and params.notna().any():
        model += f", ≈{int(params.median()):,} parameters"
    ours = {"train_images": _int(train_images), "test_images": _int(test_images),
            "seeds": int(training["seed"].nunique()), "steps": _int(steps), "device": device, "model": model}
    theirs = {"train_images": ps.get("train_size"), "test_images": ps.get("test_size"),
              "seeds": paper.TRAINING_SEEDS, "steps": ps.get("steps"), "device": "GPU (model not stated)",
              "model": f"{study.model.kind}, n = {', '.join(map(str, ps.get('experts', [])))}"} if ps else {}
    short = []
    if not ps:
        short.append(f"the paper has no results on {study.dataset}")
    else:
        for key, label in (("train_images", "training images"), ("test_images", "test images")):
            if ours[key] is not None and theirs[key] is not None and ours[key] < theirs[key]:
                short.append(f"{ours[key]:,} {label} instead of {theirs[key]:,}")
        if ours["steps"] and theirs.get("steps") and ours["steps"] < STEPS_MATCH * theirs["steps"]:
            short.append(f"{ours['steps']:,} optimizer steps instead of {theirs['steps']:,}")
    return _scale(ours, theirs, short)


def synthetic_scale(study, seeds: int) -> dict:
    syn = study.synthetic
    ours = {"train_images": syn.steps * syn.batch_size, "test_images": None, "seeds": seeds, "steps": syn.steps,
            "device": "cpu", "model": f"Soft MoE regressor, n = {', '.join(map(str, syn.experts))}"}
    theirs = {"train_images": paper.SYNTHETIC_STEPS * paper.SYNTHETIC_BATCH, "test_images": None,
              "seeds": paper.TRAINING_SEEDS, "steps": paper.SYNTHETIC_STEPS, "device": "not stated",
              "model": "Soft MoE regressor, n = 1, 2, 5, 10"}
    short = []
    if syn.steps < paper.SYNTHETIC_STEPS or syn.batch_size < paper.SYNTHETIC_BATCH:
        short.append(f"{syn.steps} steps × {syn.batch_size:,} inputs instead of "
                     f"{paper.SYNTHETIC_STEPS} × {paper.SYNTHETIC_BATCH:,}")
    return _scale(ours, theirs, short)


def latency_scale(width: float, device: str, model: str) -> dict:
    ours = {"train_images": None, "test_images": None, "seeds": None, "device": device, "model": model}
    theirs = {"train_images": None, "test_images": None, "seeds": None, "device": "RTX 2080 Ti",
              "model": paper.LATENCY_SETTING}
    return _scale(ours, theirs, [] if width >= 1 else [f"the layer at width ×{width:g} of the paper's"])


def _scale(ours: dict, theirs: dict, short: list[str]) -> dict:
    note = ("the paper's scale" if not short else
            "not the paper's scale: " + "; ".join(short) + "; the verdict holds at this run's scale only")
    return {**ours, "paper": theirs, "at_paper_scale": not short, "note": note}


def _int(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)
