"""The audit-ready report: the setting, a claims checklist computed from the tables, every
figure with our numbers beside the paper's, and the provenance of the run.

Written twice from one document: HTML that renders offline (figures embedded as base64 PNG,
no scripts, no external resources) and Markdown (figures linked by relative path)."""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import yaml

from softmoe import atomic, figures, paper
from softmoe.errors import UserError

PASS, FAIL, NOT_RUN = "PASS", "FAIL", "NOT RUN"
PACKAGES = ["torch", "torchvision", "timm", "lightning", "dvclive", "dvc", "snakemake", "pandas",
            "numpy", "seaborn", "matplotlib", "safetensors", "mlxtend", "jinja2", "softmoe-repro"]

# Thresholds of the claims checklist (stated in the report next to each result).
PLATEAU_RATIO = 2.0      # (a) final loss n=1 / best n>=2
RANDOM_TOLERANCE = 1.0   # (b) Alg1 may fall below the random mean by at most this many random std
GAP_SPEARMAN = -0.5      # (c) Spearman rank correlation of (n, gap to all experts) at most this
TIME_TOLERANCE = 0.05    # (e) a larger k may not be faster than a smaller k by more than 5 %
BUDGET_SPREAD = 0.02     # (f) all-experts accuracy within 2 points across n
STEPS_MATCH = 0.95       # the setting warns when a run has fewer than 95 % of the paper's steps
WIDE_CONFIG = "wide"     # latency.csv's name for params.latency.wide, the paper's E4 setting


@dataclass
class Claim:
    key: str
    claim: str
    threshold: str
    result: str
    evidence: str


@dataclass
class Block:
    """One piece of a section: text, warn, table, figure or pre (preformatted, shown collapsed)."""
    kind: str
    text: str = ""
    frame: pd.DataFrame | None = None
    caption: str = ""
    collapsed: bool = False


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


# ---------------------------------------------------------------- claims


def final_losses(loss: pd.DataFrame) -> pd.DataFrame:
    """Mean loss over the last 10 % of steps, per (tokens, n), like the synthetic metrics.json."""
    rows = []
    for (tok, n), g in loss.sort_values("step").groupby(["tokens", "n"]):
        tail = g["loss"].iloc[-max(1, len(g) // 10):]
        rows.append({"tokens": tok, "n": int(n), "final_loss": float(tail.mean())})
    return pd.DataFrame(rows, columns=["tokens", "n", "final_loss"])


def claim_plateau(loss: pd.DataFrame | None) -> Claim:
    """(a) Theorem 1: the single-expert loss plateau is far above that of n >= 2."""
    claim = Claim("a", "n = 1 synthetic loss plateau far above every n ≥ 2 (Theorem 1)",
                  f"final loss (mean of last 10 % of steps) of n=1 / lowest of n≥2 ≥ {PLATEAU_RATIO:g}, "
                  "in every tokenization", NOT_RUN, "synthetic_loss.csv missing or empty")
    if loss is None or loss.empty:
        return claim
    finals = final_losses(loss)
    parts, ok = [], []
    for tok, g in finals.groupby("tokens"):
        one, many = g[g["n"] == 1], g[g["n"] >= 2]
        if one.empty or many.empty:
            parts.append(f"{tok}: needs n=1 and some n≥2")
            continue
        best = many.loc[many["final_loss"].idxmin()]
        ratio = one["final_loss"].iloc[0] / best["final_loss"]
        ok.append(ratio >= PLATEAU_RATIO)
        parts.append(f"{tok}: n=1 {one['final_loss'].iloc[0]:.3g} vs n={int(best['n'])} "
                     f"{best['final_loss']:.3g}, ratio {ratio:.2f}")
    claim.evidence = "; ".join(parts)
    if ok:
        claim.result = PASS if all(ok) else FAIL
    return claim


def alg1_vs_random(selection: pd.DataFrame, renormalize: bool = False) -> pd.DataFrame:
    """Each Algorithm 1 row next to the random rows at the same (n, seed, k), with z."""
    rows = selection[selection["renormalize"] == renormalize]
    keys = ["n", "seed", "k"]
    alg = rows[rows["method"] == "alg1"][keys + ["accuracy"]]
    rnd = rows[rows["method"] == "random"][keys + ["accuracy", "std"]]
    pairs = alg.merge(rnd, on=keys, suffixes=("", "_random"))
    diff = pairs["accuracy"] - pairs["accuracy_random"]
    std = pairs["std"].fillna(0.0)
    pairs["z"] = np.where(std > 0, diff / std.where(std > 0, 1.0), np.nan)
    pairs["below_mean"] = diff < 0
    pairs["violation"] = diff < -RANDOM_TOLERANCE * std
    return pairs.sort_values(keys).reset_index(drop=True)


def claim_alg1_beats_random(selection: pd.DataFrame) -> Claim:
    """(b) Algorithm 1 is at least as accurate as a random k-subset for every (n, k)."""
    claim = Claim("b", "Algorithm 1 ≥ random k-subset mean for every (n, k) evaluated",
                  f"no (n, seed, k) where Algorithm 1 falls below the random mean by more than "
                  f"{RANDOM_TOLERANCE:g} random std (z < −{RANDOM_TOLERANCE:g})", NOT_RUN,
                  "no Algorithm 1 rows with random rows at the same (n, k)")
    pairs = alg1_vs_random(selection)
    if pairs.empty:
        return claim
    bad = pairs[pairs["violation"]]
    z = pairs["z"].dropna()
    worst = pairs.loc[z.idxmin()] if not z.empty else None
    claim.evidence = (f"{len(pairs)} (n, seed, k) compared; {len(bad)} violations; "
                      f"{int(pairs['below_mean'].sum())} below the random mean at all")
    if worst is not None:
        claim.evidence += (f"; min z = {worst['z']:.2f} (n={int(worst['n'])}, k={int(worst['k'])}), "
                           f"median z = {z.median():.2f}")
    if not bad.empty:
        claim.evidence += "; violations at " + ", ".join(
            f"(n={int(r.n)}, k={int(r.k)})" for r in bad.head(8).itertuples())
    claim.result = PASS if bad.empty else FAIL
    return claim


def gap_fraction(selection: pd.DataFrame, fractions: list[float]) -> float | None:
    """k = n/8 if at least two n have it, else the next larger fraction (n/4, ...)."""
    ns = sorted(set(selection["n"]))
    for frac in sorted(fractions):
        if frac < 1 and sum(figures.k_at(int(n), frac) is not None for n in ns) >= 2:
            return frac
    return None


def gaps_to_all(selection: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Per n: all-experts accuracy minus Algorithm 1 accuracy at k = n * fraction (seed means)."""
    means = figures.mean_over_seeds(selection)
    full = means[means["method"] == "all"].groupby("n")["accuracy"].mean()
    alg = figures.at_fraction(means[(means["method"] == "alg1") & ~means["renormalize"]], fraction)
    alg = alg.set_index("n")["accuracy"]
    both = pd.DataFrame({"all": full, "alg1": alg}).dropna()
    both["gap"] = both["all"] - both["alg1"]
    return both.reset_index().rename(columns={"index": "n"}).sort_values("n")


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); nan if either side is constant."""
    rx, ry = pd.Series(list(x)).rank(), pd.Series(list(y)).rank()
    if rx.nunique() < 2 or ry.nunique() < 2:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def claim_gap_shrinks(selection: pd.DataFrame, fractions: list[float]) -> Claim:
    """(c) The gap between Algorithm 1 and all experts shrinks as n grows."""
    claim = Claim("c", "the gap from Algorithm 1 to all experts shrinks as n grows",
                  f"at the smallest k fraction evaluated for ≥ 2 n: gap at the largest n < gap at the "
                  f"smallest n, and Spearman ρ(n, gap) ≤ {GAP_SPEARMAN:g} when ≥ 3 n",
                  NOT_RUN, "fewer than two n with Algorithm 1 and all-experts rows at a common fraction")
    frac = gap_fraction(selection, fractions)
    gaps = gaps_to_all(selection, frac) if frac is not None else pd.DataFrame()
    if len(gaps) < 2:
        return claim
    rho = spearman(gaps["n"], gaps["gap"])
    first, last = gaps["gap"].iloc[0], gaps["gap"].iloc[-1]
    ok = last < first and (len(gaps) < 3 or rho <= GAP_SPEARMAN)
    listing = ", ".join(f"n={int(r.n)}: {r.gap:.3f}" for r in gaps.itertuples())
    claim.claim = f"the gap from Algorithm 1 (k = {figures.frac_label(frac)}) to all experts shrinks as n grows"
    claim.evidence = f"gap {listing}; Spearman ρ = {rho:.2f}"
    claim.result = PASS if ok else FAIL
    return claim


def claim_oracle_rises(selection: pd.DataFrame) -> Claim:
    """(d) The oracle (best k-subset) accuracy rises with n."""
    claim = Claim("d", "oracle (best k-subset) accuracy rises with n",
                  "never falls from one n to the next, and is higher at the largest n than at the "
                  "smallest (or 100 % at both)", NOT_RUN, "oracle rows for fewer than two n")
    rows = figures.oracle_rows(selection)
    if len(rows) < 2:
        return claim
    acc = rows["oracle"].to_numpy()
    ok = bool(np.all(np.diff(acc) >= 0) and (acc[-1] > acc[0] or acc[0] >= 1.0))
    claim.evidence = "; ".join(
        f"n={int(r.n)} (k={int(r.k)}): {r.oracle:.4f} vs random {_num(r.random, 4)}, "
        f"{_num(r.distinct, 0)} distinct subsets" for r in rows.itertuples())
    claim.result = PASS if ok else FAIL
    return claim


def _time_falls(g: pd.DataFrame) -> bool | None:
    """Whether the median time of one (config, batch) falls with k; None with a single k."""
    ms = g.sort_values("k")["median_ms"].to_numpy()
    if len(ms) < 2:
        return None
    return bool(ms[0] < ms[-1] and np.all(ms[1:] >= ms[:-1] * (1 - TIME_TOLERANCE)))


def claim_time_falls(latency: pd.DataFrame | None) -> Claim:
    """(e) The selective path gets faster as fewer experts run, judged on the paper's E4 setting
    (the wide configuration) when it was timed, else on every configuration."""
    claim = Claim("e", "selective inference time falls with k",
                  f"per batch size, on the '{WIDE_CONFIG}' configuration (E4; every configuration if "
                  f"absent): time at the smallest k < time at k = n, and no larger k faster than a "
                  f"smaller k by more than {TIME_TOLERANCE:.0%}", NOT_RUN, "latency.csv missing or empty")
    if latency is None or latency.empty:
        return claim
    wide = latency["config"] == WIDE_CONFIG
    judged = latency[wide] if wide.any() else latency
    parts, ok = [], []
    for (config, n, batch), g in judged.sort_values("k").groupby(["config", "n", "batch"]):
        good = _time_falls(g)
        ratios = " ".join(_num(r, 2) for r in g["ratio"])
        ks = ",".join(str(int(k)) for k in g["k"])
        if good is None:
            parts.append(f"{config} batch {int(batch)}: one k only, not compared")
            continue
        ok.append(good)
        parts.append(f"{config} n={int(n)} batch {int(batch)}: ratio {ratios} for k={ks}"
                     + ("" if good else " (does not fall)"))
    if wide.any():
        others = [_time_falls(g) for _, g in latency[~wide].groupby(["config", "n", "batch"])]
        others = [o for o in others if o is not None]
        if others:
            parts.append(f"not judged, the trained models: time falls with k in {sum(others)} of "
                         f"{len(others)} (config, batch)")
    claim.evidence = "; ".join(parts)
    if ok:
        claim.result = PASS if all(ok) else FAIL
    return claim


def claim_budget_holds(training: pd.DataFrame) -> Claim:
    """(f) At a fixed parameter budget the all-experts accuracy barely depends on n."""
    claim = Claim("f", "the fixed budget holds accuracy: all-experts accuracy similar for every n",
                  f"best − worst all-experts test accuracy across n ≤ {BUDGET_SPREAD:g}", NOT_RUN,
                  "fewer than two n trained")
    means = training.groupby("n")["test_accuracy"].mean()
    if len(means) < 2:
        return claim
    spread = means.max() - means.min()
    claim.evidence = (f"spread {spread:.3f}: best n={int(means.idxmax())} {means.max():.3f}, "
                      f"worst n={int(means.idxmin())} {means.min():.3f}")
    claim.result = PASS if spread <= BUDGET_SPREAD else FAIL
    return claim


def check_claims(params: dict, tables: dict) -> list[Claim]:
    """Every claim of the checklist, computed from the tables."""
    sel = tables["selection"]
    return [claim_plateau(tables["synthetic_loss"]), claim_alg1_beats_random(sel),
            claim_gap_shrinks(sel, params["evaluate"]["fractions"]), claim_oracle_rises(sel),
            claim_time_falls(tables["latency"]), claim_budget_holds(tables["training"])]


# ---------------------------------------------------------------- formatting


def _given(value) -> bool:
    """False for None and NaN (the empty cells of the reference tables)."""
    return value is not None and not pd.isna(value)


def _num(value, digits: int = 3, signed: bool = False) -> str:
    if not _given(value):
        return "–"
    if isinstance(value, (int, np.integer)) and not signed:
        return f"{int(value):,}"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _diff(ours, ref, digits: int = 3) -> str:
    if not (_given(ours) and _given(ref)):
        return "–"
    return _num(float(ours) - float(ref), digits, signed=True)


# ---------------------------------------------------------------- sections


def _setting(params: dict, tables: dict, hardware: dict | None) -> Section:
    ds, train = params["dataset"], tables["training"]
    ref = paper.REFERENCE.get(ds)
    ps = paper.SETTING.get(ref, {})
    entry = params["datasets"][ds]
    syn, lat = params["synthetic"], params["latency"]
    steps = sorted({int(s) for s in train["steps"].dropna()})
    epochs = sorted({int(e) for e in train["epochs"].dropna()})
    device = hardware.get("device", "–") if hardware else "latency not run"
    rows = [
        ("dataset", f"{ds} ({entry['source']})", ref or "not used by the paper"),
        ("train / test images", f"{entry.get('train_size', 'full split')} / {entry.get('test_size', 'full split')}",
         f"{ps.get('train_size', '–')} / {ps.get('test_size', '–')}"),
        ("experts n (fixed budget)", ", ".join(map(str, params["experts"])),
         ", ".join(map(str, ps.get("experts", [])))),
        ("training seeds", ", ".join(map(str, params["seeds"])), str(paper.TRAINING_SEEDS)),
        ("epochs (as run)", ", ".join(map(str, epochs)) or "–", str(ps.get("epochs", "–"))),
        ("optimizer steps (as run)", ", ".join(map(str, steps)) or "–", str(ps.get("steps") or "–")),
        ("batch size", str(params["train"]["batch_size"]), str(ps.get("batch_size", "–"))),
        ("optimizer", f"{params['train']['optimizer']}, lr {params['train']['lr']:g}, {params['train']['schedule']}",
         ps.get("optimizer", "–")),
        ("random-subset seeds", str(len(params["evaluate"]["random_seeds"])), str(paper.RANDOM_SEEDS)),
        ("synthetic steps × batch", f"{syn['steps']} × {syn['batch_size']}",
         f"{paper.SYNTHETIC_STEPS} × {paper.SYNTHETIC_BATCH}"),
        ("latency model", f"n={lat['wide']['experts']}, width ×{lat['wide']['width']:g}, {device}",
         paper.LATENCY_SETTING),
    ]
    frame = pd.DataFrame(rows, columns=["", "this run", "paper"])
    warnings = _scale_warnings(params, ds, ps, steps, epochs)
    blocks = [Block("table", frame=frame, caption="The setting of this run against the paper's.")]
    if warnings:
        blocks.insert(0, Block("warn", text="Not the paper's scale: " + "; ".join(warnings) +
                               ". Compare shapes and claims, not absolute numbers."))
    return Section("Setting", blocks)


def _scale_warnings(params: dict, ds: str, ps: dict, steps: list[int], epochs: list[int]) -> list[str]:
    out = []
    if not ps:
        out.append(f"the paper has no results on {ds}")
    entry = params["datasets"][ds]
    if "train_size" in entry and ps and entry["train_size"] < ps["train_size"]:
        out.append(f"{entry['train_size']:,} training images instead of {ps['train_size']:,}")
    if "test_size" in entry and ps and entry["test_size"] < ps["test_size"]:
        out.append(f"{entry['test_size']:,} test images instead of {ps['test_size']:,}")
    if ps and epochs and epochs != [ps["epochs"]]:
        out.append(f"{'/'.join(map(str, epochs))} epochs instead of {ps['epochs']}")
    if ps and ps.get("steps") and steps and max(steps) < STEPS_MATCH * ps["steps"]:
        out.append(f"{max(steps):,} optimizer steps instead of {ps['steps']:,}")
    syn = params["synthetic"]
    if syn["steps"] < paper.SYNTHETIC_STEPS or syn["batch_size"] < paper.SYNTHETIC_BATCH:
        out.append(f"synthetic runs of {syn['steps']} steps × {syn['batch_size']:,} inputs instead of "
                   f"{paper.SYNTHETIC_STEPS} × {paper.SYNTHETIC_BATCH:,}")
    if params["latency"]["wide"]["width"] < 1:
        out.append(f"latency model at width ×{params['latency']['wide']['width']:g} of the paper's")
    return out


def _claims_section(claims: list[Claim]) -> Section:
    frame = pd.DataFrame([{"": c.key, "claim": c.claim, "result": c.result, "threshold": c.threshold,
                           "evidence": c.evidence} for c in claims])
    counts = {r: sum(c.result == r for c in claims) for r in (PASS, FAIL, NOT_RUN)}
    text = (f"{counts[PASS]} PASS, {counts[FAIL]} FAIL, {counts[NOT_RUN]} NOT RUN. Each row is "
            "computed from the tables by softmoe.report with the threshold shown.")
    return Section("Claims checklist", [Block("text", text=text), Block("table", frame=frame)])


def _figure(stem: str) -> Block:
    title, caption = figures.FIGURES[stem]
    return Block("figure", text=stem, caption=f"{title}. {caption}")


def _selection_section(params: dict, tables: dict) -> Section:
    sel = tables["selection"]
    means = figures.mean_over_seeds(sel)
    blocks = [_figure("fig1_selection_vs_fraction"), _figure("fig2_selection_vs_n")]
    ref_name = paper.REFERENCE.get(params["dataset"])
    if ref_name:
        ref = paper.headlines(ref_name)
        frame = _reference_comparison(means, ref)
        blocks.append(Block("table", frame=frame, caption=(
            f"Ours ({params['dataset']}, mean over training seeds; ± = std over random seeds) beside the "
            f"paper's {ref_name} numbers ({ref['source'].iloc[0] if len(ref) else '–'}); Δ = ours − paper.")))
    else:
        blocks.append(Block("text", text=f"The paper reports no numbers on {params['dataset']}."))
    blocks.append(Block("table", frame=_z_table(sel), caption=(
        "Algorithm 1 against random at every k evaluated, per n and variant: z = (Alg1 − random mean) "
        "/ random std.")))
    ablation = _renormalized_table(means, params["evaluate"]["fractions"])
    if ablation is not None:
        blocks.append(Block("table", frame=ablation, caption=(
            "Ablation: combine weights renormalized over the kept experts (not in the paper).")))
    return Section("Algorithm 1 vs random (E3; paper figures 1 and 2)", blocks)


def _ours_at(means: pd.DataFrame, n, method: str, k, k_frac) -> pd.DataFrame:
    """Our rows (paper's variant) matching one reference point; n not given: every n."""
    rows = means[(means["method"] == method) & ~means["renormalize"]]
    if _given(n):
        rows = rows[rows["n"] == int(n)]
    if method == "all":
        return rows
    if _given(k):
        return rows[rows["k"] == int(k)]
    return figures.at_fraction(rows, float(k_frac))


def _reference_comparison(means: pd.DataFrame, ref: pd.DataFrame) -> pd.DataFrame:
    """One row per reference point of a run n: ours, paper, difference; ordered by n, then k."""
    method_order = {"all": 0, "alg1": 1, "random": 2}
    out = []
    for r in ref.itertuples():
        if _given(r.n) and int(r.n) not in set(means["n"]):
            continue
        rows = _ours_at(means, r.n, r.method, r.k, r.k_frac)
        acc = rows["accuracy"].mean() if not rows.empty else float("nan")
        std = rows["std"].mean() if r.method == "random" and not rows.empty else float("nan")
        out.append({"_order": (int(r.n) if _given(r.n) else 0, -(r.k_frac if _given(r.k_frac) else 0),
                               method_order.get(r.method, 3)),
                    "n": str(int(r.n)) if _given(r.n) else "mean over n",
                    "k": str(int(r.k)) if _given(r.k) else figures.frac_label(r.k_frac), "method": r.method,
                    "ours": _num(acc) + (f" ± {std:.3f}" if _given(std) else ""),
                    "paper": _num(r.accuracy), "Δ": _diff(acc, r.accuracy),
                    **({"what": r.what} if r.what else {})})
    if not out:
        return pd.DataFrame(columns=["n", "k", "method", "ours", "paper", "Δ"])
    frame = pd.DataFrame(out).fillna("").sort_values("_order", kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def _z_table(selection: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for renorm in sorted(set(selection["renormalize"])):
        pairs = alg1_vs_random(selection, renorm)
        for n, g in pairs.groupby("n"):
            z = g["z"].dropna()
            rows.append({"n": int(n), "variant": figures.VARIANTS[renorm], "(seed, k) pairs": len(g),
                         "Alg1 > random": int((g["accuracy"] > g["accuracy_random"]).sum()),
                         "min z": _num(z.min(), 2) if len(z) else "–",
                         "median z": _num(z.median(), 2) if len(z) else "–",
                         "worst Δ": _num((g["accuracy"] - g["accuracy_random"]).min(), 3, signed=True)})
    return pd.DataFrame(rows)


def _renormalized_table(means: pd.DataFrame, fractions: list[float]) -> pd.DataFrame | None:
    if not means["renormalize"].any():
        return None
    rows = []
    for frac in sorted(fractions, reverse=True):
        alg = figures.at_fraction(means[means["method"] == "alg1"], frac)
        for n, g in alg.groupby("n"):
            paper_v = g.loc[~g["renormalize"], "accuracy"].mean()
            renorm = g.loc[g["renormalize"], "accuracy"].mean()
            rows.append({"n": int(n), "k": figures.frac_label(frac), "Alg1 (paper)": _num(paper_v),
                         "Alg1 renormalized": _num(renorm), "Δ": _diff(renorm, paper_v)})
    return pd.DataFrame(rows)


def _oracle_section(params: dict, tables: dict) -> Section:
    rows = figures.oracle_rows(tables["selection"])
    blocks = [_figure("fig4_oracle")]
    if rows.empty:
        blocks.append(Block("text", text=(
            f"NOT RUN: no oracle rows (C(n, k) exceeds evaluate.oracle_limit = "
            f"{params['evaluate']['oracle_limit']} for every n).")))
        return Section("Oracle: best expert subsets (E2; paper table 1, figure 5)", blocks)
    mnist = paper.REFERENCE.get(params["dataset"]) == "mnist"
    ref = paper.e2_oracle().set_index("n") if mnist else pd.DataFrame()
    out = []
    for r in rows.itertuples():
        p = ref.loc[int(r.n)] if int(r.n) in ref.index else None
        out.append({"n": int(r.n), "k": int(r.k),
                    "best ours": _num(r.oracle, 4), "best paper": _num(p["oracle"], 4) if p is not None else "–",
                    "Δ best": _diff(r.oracle, p["oracle"] if p is not None else None, 4),
                    "random ours": f"{_num(r.random, 4)} ± {_num(r.random_std, 4)}",
                    "random paper": f"{p['random']:.4f} ± {p['random_std']:.4f}" if p is not None else "–",
                    "Δ random": _diff(r.random, p["random"] if p is not None else None, 4),
                    "distinct ours": _num(int(r.distinct)) if _given(r.distinct) else "–",
                    "distinct paper": _num(int(p["distinct"])) if p is not None else "–",
                    "possible C(n,k)": _num(int(r.possible))})
    blocks.append(Block("table", frame=pd.DataFrame(out), caption=(
        f"Best k-subset per test input (using the label) vs a random k-subset; paper: MNIST, "
        f"10,000 test images ({paper.TABLE}). Our test set: see Setting.")))
    return Section("Oracle: best expert subsets (E2; paper table 1, figure 5)", blocks)


def _synthetic_section(tables: dict) -> Section:
    blocks = [_figure("fig3_synthetic_loss")]
    loss, proof = tables["synthetic_loss"], tables["synthetic_proof"]
    if loss is None or loss.empty:
        blocks.append(Block("text", text="NOT RUN: synthetic_loss.csv missing or empty."))
    else:
        ref = paper.e1_plateaus().set_index(["tokens", "n"])["loss"]
        rows = [{"tokenization": r.tokens, "n": int(r.n), "final loss ours": _num(r.final_loss, 3),
                 "plateau paper": _num(ref.get((r.tokens, int(r.n)))),
                 "Δ": _diff(r.final_loss, ref.get((r.tokens, int(r.n))), 3)}
                for r in final_losses(loss).itertuples()]
        blocks.append(Block("table", frame=pd.DataFrame(rows), caption=(
            f"Final training loss (mean of the last 10 % of steps) beside the paper's plateaus ({paper.PLOT}).")))
    blocks.append(_figure("fig3_proof_check"))
    if proof is None or proof.empty:
        blocks.append(Block("text", text="NOT RUN: synthetic_proof.csv missing or empty."))
    else:
        frame = proof.sort_values(["tokens", "case", "a"])[
            ["tokens", "case", "a", "slot_gap", "norm_gap", "abs_error_A", "abs_error_B"]]
        frame = frame.assign(**{c: frame[c].map(lambda v: f"{v:.3g}") for c in frame.columns[2:]})
        blocks.append(Block("table", frame=frame, collapsed=True, caption=(
            "Proof check of the n = 1 model: gaps and absolute errors on the input pairs (A, B), per scale a.")))
    return Section("Synthetic ‖x‖₂: Theorem 1 (E1; paper figure 4)", blocks)


def _latency_section(tables: dict) -> Section:
    lat = tables["latency"]
    blocks = [_figure("fig5_latency")]
    title = "Inference time of the selective path (E4; paper table 3)"
    if lat is None or lat.empty:
        blocks.append(Block("text", text="NOT RUN: latency.csv missing or empty."))
        return Section(title, blocks)
    ref = paper.e4_latency()
    fracs = sorted(set(lat["k_frac"].round(6)) | set(ref["k_frac"]))
    rows = []
    for (config, n, batch), g in lat.groupby(["config", "n", "batch"]):
        row = {"config": config, "n": int(n), "batch": int(batch),
               "ms at k=n": _num(g.loc[g["k"] == n, "median_ms"].mean(), 2)}
        for f in fracs[:-1] if fracs[-1] == 1.0 else fracs:
            ours = g.loc[np.isclose(g["k_frac"], f), "ratio"].mean()
            theirs = ref.loc[(ref["batch"] == batch) & np.isclose(ref["k_frac"], f), "ratio"].mean()
            row[f"k/n={f:g}"] = f"{_num(ours)} / {_num(theirs)}" if _given(theirs) else _num(ours)
        rows.append(row)
    blocks.append(Block("table", frame=pd.DataFrame(rows), caption=(
        "Time with k experts running / time with all n: ours / paper where the paper measured the same "
        f"k/n and batch size. Paper ({paper.TABLE}): {paper.LATENCY_SETTING}. Ideal: k/n.")))
    full = lat.sort_values(["config", "n", "batch", "k"])
    full = pd.DataFrame({"config": full["config"], "n": full["n"].astype(int), "batch": full["batch"].astype(int),
                         "k": full["k"].astype(int), "median ms": full["median_ms"].map(lambda v: _num(v, 2)),
                         "q25–q75 ms": [f"{_num(a, 2)}–{_num(b, 2)}" for a, b in zip(full["q25_ms"], full["q75_ms"])],
                         "repeats": full["repeats"].map(lambda v: _num(v, 0)), "ratio": full["ratio"].map(_num),
                         "ideal": full["ideal"].map(_num), "FLOP ratio": full["flop_ratio"].map(_num),
                         "device": full["device"]})
    blocks.append(Block("table", frame=full, collapsed=True, caption="Every timing of latency.csv"))
    return Section(title, blocks)


def _training_section(params: dict, tables: dict) -> Section:
    train = tables["training"]
    blocks = [_figure("fig6_training_curves")]
    if tables["curves"] is None or tables["curves"].empty:
        blocks.append(Block("text", text="NOT RUN: curves.csv missing or empty."))
    blocks.append(_figure("fig6_all_experts_vs_n"))
    ref_name = paper.REFERENCE.get(params["dataset"])
    ref = paper.headlines(ref_name) if ref_name else pd.DataFrame(columns=["n", "method", "accuracy"])
    ref = ref[(ref["method"] == "all") & ref["n"].notna()]
    ref = dict(zip(ref["n"].astype(int), ref["accuracy"]))
    g = train.groupby("n").agg(seeds=("seed", "nunique"), hidden=("expert_hidden", "first"),
                               experts=("params_experts", "first"), total=("params_total", "first"),
                               epochs=("epochs", "max"), steps=("steps", "max"),
                               train_loss=("train_loss", "mean"), acc=("test_accuracy", "mean"),
                               wall=("wall_time_s", "sum"), device=("device", "first"))
    rows = [{"n": int(n), "seeds": int(r.seeds), "expert hidden": _num(r.hidden, 0),
             "expert params": _num(r.experts, 0), "total params": _num(r.total, 0),
             "epochs": _num(r.epochs, 0), "steps": _num(r.steps, 0), "train loss": _num(r.train_loss),
             "test acc ours": _num(r.acc), "paper (all experts)": _num(ref.get(int(n))),
             "Δ": _diff(r.acc, ref.get(int(n))), "train time s": _num(r.wall, 0), "device": r.device}
            for n, r in g.iterrows()]
    blocks.append(Block("table", frame=pd.DataFrame(rows), caption=(
        "One row per n (means over training seeds): the real parameter counts at the fixed budget "
        "(the floor makes it inexact at large n) and the all-experts test accuracy.")))
    return Section("Training and the fixed budget", blocks)


def _benchmarks_section() -> Section:
    """A pointer, not a copy: the benchmark files are written by `snakemake bench`, which is not
    a step of this report, so reading them here would make the report depend on whether (and
    when) that ran."""
    return Section("Benchmarks", [Block("text", text=(
        "Speed of this implementation (not a result of the paper): reports/benchmarks.md (CPU, "
        "`snakemake --cores all bench`) and reports/benchmarks-gpu.md (CUDA, benchmarks/gpu.sh), "
        "each with the machine and the code hashes it measured; not read by this report."))])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def _flatten(value, prefix: str) -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(value) if isinstance(value, list) else value}


# ---------------------------------------------------------------- provenance


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: Path) -> dict:
    """commit, dirty (bool or None), modified and untracked paths; tolerant of no git."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None:
        return {"commit": "not a git repository (or git missing)", "dirty": None, "modified": [], "untracked": 0}
    commit = _git(root, "rev-parse", "HEAD")
    status = (_git(root, "status", "--porcelain") or "").splitlines()
    modified = [line[3:] for line in status if not line.startswith("??")]
    return {"commit": commit.strip() if commit else "no commit yet", "dirty": bool(status),
            "modified": modified, "untracked": sum(line.startswith("??") for line in status),
            "root": top.strip()}


def dvc_outs(lock: Path) -> pd.DataFrame | None:
    """stage, path, md5, size of every output in dvc.lock; None if there is no dvc.lock."""
    if not lock.is_file():
        return None
    try:
        data = yaml.safe_load(lock.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{lock}: not valid YAML ({err}); run `dvc commit` or `dvc repro`") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
        raise UserError(f"{lock}: expected a mapping with 'stages'; regenerate it with `dvc repro`")
    rows = []
    for stage, body in (data.get("stages") or {}).items():
        for out in (body or {}).get("outs", []) or []:
            rows.append({"stage": stage, "path": out.get("path", "–"), "md5": out.get("md5", "–"),
                         "size": _num(out.get("size"), 0) if out.get("size") is not None else "–"})
    return pd.DataFrame(rows, columns=["stage", "path", "md5", "size"])


def wall_times(benchmarks_dir: Path) -> pd.DataFrame:
    """One row per Snakemake benchmark file: rule, job, seconds, max_rss (MB)."""
    rows = []
    for path in sorted(Path(benchmarks_dir).rglob("*.tsv")):
        try:
            frame = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
            raise UserError(f"{path}: not a Snakemake benchmark file ({err})") from None
        if "s" not in frame.columns or frame.empty:
            raise UserError(f"{path}: Snakemake benchmark file without column 's' or rows")
        rel = path.relative_to(benchmarks_dir)
        rss = pd.to_numeric(frame.get("max_rss", pd.Series(dtype=float)), errors="coerce")
        rows.append({"rule": rel.parts[0] if len(rel.parts) > 1 else rel.stem,
                     "job": str(rel.with_suffix("")), "s": float(pd.to_numeric(frame["s"], errors="coerce").mean()),
                     "max_rss_mb": float(rss.max()) if rss.notna().any() else float("nan")})
    return pd.DataFrame(rows, columns=["rule", "job", "s", "max_rss_mb"])


def _versions() -> pd.DataFrame:
    rows = []
    for name in PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        rows.append({"package": name, "version": version})
    return pd.DataFrame(rows)


def _provenance(params: dict, params_path: Path, tables: dict, hardware: dict | None,
                dirs: dict[str, Path]) -> Section:
    params_path = Path(params_path)
    raw = params_path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    git = git_state(params_path.resolve().parent)
    root = Path(git.get("root", params_path.resolve().parent))
    dirty = {True: f"dirty: {len(git['modified'])} modified tracked file(s), {git['untracked']} untracked",
             False: "clean", None: "–"}[git["dirty"]]
    train = tables["training"]
    seeds = {"training seeds (params.seeds)": params["seeds"],
             "random-subset seeds (evaluate.random_seeds)": params["evaluate"]["random_seeds"],
             "synthetic seed (synthetic.seed)": params["synthetic"]["seed"],
             f"data split seed (datasets.{params['dataset']}.split_seed)":
                 params["datasets"][params["dataset"]].get("split_seed", "–")}
    facts = [("git commit", git["commit"]), ("working tree", dirty),
             ("params file", str(params_path)), ("params sha256", hashlib.sha256(raw).hexdigest()),
             *((f"{name} folder", str(path)) for name, path in dirs.items()),
             ("Python", platform.python_version()), ("OS", platform.platform()),
             ("report machine", f"{platform.machine()}, {os.cpu_count()} CPUs"),
             ("training device(s)", ", ".join(sorted({str(d) for d in train["device"]}))),
             ("training threads", ", ".join(sorted({str(int(t)) for t in train["threads"].dropna()})) or "–")]
    facts += [(f"hardware.{k}", _cell(v)) for k, v in _flatten(hardware or {}, "").items()]
    if hardware is None:
        facts.append(("hardware.json", "NOT RUN (latency step not run)"))
    facts += [(k, ", ".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in seeds.items()]
    blocks = [Block("table", frame=pd.DataFrame(facts, columns=["", "value"]))]
    if git["modified"]:
        blocks.append(Block("pre", text="\n".join(git["modified"][:50]), caption="Modified tracked files"))
    blocks.append(Block("pre", text=text, caption=f"{params_path.name} (sha256 above)"))
    blocks += _dvc_blocks(root / "dvc.lock")
    blocks.append(Block("table", frame=_versions(), caption="Package versions", collapsed=True))
    blocks += _wall_blocks(dirs["benchmarks"], train)
    return Section("Provenance", blocks)


def _dvc_blocks(lock: Path) -> list[Block]:
    outs = dvc_outs(lock)
    if outs is None:
        return [Block("text", text=f"dvc.lock: NOT RUN (no {lock}; the run was made with Snakemake "
                                   "only, or `dvc commit` has not run).")]
    return [Block("table", frame=outs, collapsed=True,
                  caption=f"DVC-tracked outputs and their md5 ({len(outs)} from {lock.name})")]


def _wall_blocks(benchmarks_dir: Path, train: pd.DataFrame) -> list[Block]:
    bench = wall_times(benchmarks_dir) if Path(benchmarks_dir).is_dir() else pd.DataFrame()
    if bench.empty:
        total = train["wall_time_s"].sum()
        return [Block("text", text=(f"Wall time per step: NOT RUN (no Snakemake benchmark files under "
                                    f"{benchmarks_dir}). Training alone (training.csv): {total:,.0f} s."))]
    per_rule = bench.groupby("rule").agg(jobs=("job", "count"), total_s=("s", "sum"), mean_s=("s", "mean"),
                                         max_s=("s", "max"), max_rss_mb=("max_rss_mb", "max")).reset_index()
    total = bench["s"].sum()
    per_rule = per_rule.assign(**{c: per_rule[c].map(lambda v: _num(v, 1)) for c in
                                  ["total_s", "mean_s", "max_s", "max_rss_mb"]})
    jobs = bench.assign(s=bench["s"].map(lambda v: _num(v, 1)),
                        max_rss_mb=bench["max_rss_mb"].map(lambda v: _num(v, 0)))
    return [Block("table", frame=per_rule, caption=(
                f"Wall time per rule from {len(bench)} Snakemake benchmark files: total {total:,.1f} s "
                f"({total / 3600:.2f} h of job time; jobs may have run in parallel).")),
            Block("table", frame=jobs, caption="Wall time of every job", collapsed=True)]


# ---------------------------------------------------------------- rendering


def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("softmoe", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2")


def _image(figures_dir: Path, stem: str) -> str | None:
    png = Path(figures_dir) / f"{stem}.png"
    if not png.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def render_html(title: str, sections: list[Section], figures_dir: Path) -> str:
    """Self-contained HTML: inline CSS, figures as data URIs, no scripts."""
    images = {b.text: _image(figures_dir, b.text) for s in sections for b in s.blocks if b.kind == "figure"}
    return _template().render(title=title, sections=sections, images=images, figures_dir=str(figures_dir),
                              status={PASS: "pass", FAIL: "fail", NOT_RUN: "notrun"})


def _md_table(frame: pd.DataFrame) -> str:
    def esc(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    head = "| " + " | ".join(esc(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(esc(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def render_markdown(title: str, sections: list[Section], figures_dir: Path, md: Path) -> str:
    """Markdown with figures linked relative to the Markdown file."""
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if b.kind in ("text", "warn"):
                out += [f"> **{b.text}**" if b.kind == "warn" else b.text, ""]
            elif b.kind == "figure":
                png = Path(figures_dir) / f"{b.text}.png"
                rel = Path(os.path.relpath(png.resolve(), Path(md).resolve().parent)).as_posix()
                out += [f"![{b.text}]({rel})" if png.is_file() else f"*(figure {png} not found)*", "",
                        f"*{b.caption}*", ""]
            elif b.kind == "table":
                out += ([f"*{b.caption}*", ""] if b.caption else []) + [_md_table(b.frame), ""]
            else:
                out += [f"*{b.caption}*", "", "```", b.text.rstrip("\n"), "```", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- entry point


def _check_dataset(params: dict, tables: dict, tables_dir: Path) -> None:
    for name in ("selection", "training"):
        found = sorted(set(tables[name]["dataset"].astype(str)))
        if found != [params["dataset"]]:
            raise UserError(f"{Path(tables_dir) / (name + '.csv')}: holds dataset(s) {found}, but "
                            f"params 'dataset' is {params['dataset']!r}; pass the matching --tables folder")


def build_report(params: dict, params_path: Path, tables_dir: Path, figures_dir: Path,
                 benchmarks_dir: Path, html: Path, md: Path) -> None:
    """Write the HTML and Markdown report from the tables, figures and benchmark files."""
    tables = {name: figures.read_table(tables_dir, name) for name in figures.SCHEMAS}
    _check_dataset(params, tables, tables_dir)
    hardware = figures.read_hardware(tables_dir)
    sections = [
        _setting(params, tables, hardware),
        _claims_section(check_claims(params, tables)),
        _selection_section(params, tables),
        _oracle_section(params, tables),
        _synthetic_section(tables),
        _latency_section(tables),
        _training_section(params, tables),
        _benchmarks_section(),
        _provenance(params, params_path, tables, hardware,
                    {"tables": tables_dir, "figures": figures_dir, "benchmarks": benchmarks_dir}),
    ]
    title = params["report"]["title"]
    atomic.write_text(html, render_html(title, sections, figures_dir))
    atomic.write_text(md, render_markdown(title, sections, figures_dir, md))
