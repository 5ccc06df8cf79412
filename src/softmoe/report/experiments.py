"""The report's section per experiment: Algorithm 1 vs random (E3), the oracle (E2), the
synthetic ‖x‖₂ runs (E1), inference time (E4) and training at the fixed budget, each with its
figures and its numbers beside the paper's."""
from __future__ import annotations

import math

import pandas as pd

from softmoe.experiments import plots
from softmoe.study import paper, stats
from softmoe.workflow import tables
from softmoe.statistics.discrepancies import compare_headlines, e1_finals, oracle_rows
from softmoe.experiments.e3_selection import SELECTION, alg1_vs_random
from softmoe.study.layout import WIDE
from softmoe.experiments.e1_theorem import SYNTHETIC_LOSS, SYNTHETIC_PROOF
from softmoe.experiments.e4_latency import LATENCY
from softmoe.experiments.training import TRAINING, TRAINING_TIME
from softmoe.report.render import Block, Section, diff, given, num, pm
from softmoe.report.context import Context, figure, trace

TABLE_HEAD = 12           # long tidy tables: the report prints this many rows and links the CSV


# ---- E3 ------------------------------------------------------------------------------------------
def pivot_vs_paper(ctx: Context) -> pd.DataFrame | None:
    """The paper's layout: one row per (method, k), n across; cells 'ours ± 95 % / paper'."""
    ref_name = paper.REFERENCE.get(ctx.study.dataset)
    if not ref_name:
        return None
    comp = compare_headlines(ctx.frames[SELECTION.name], paper.headlines(ref_name))
    if comp.empty:
        return None
    comp["row"] = [("all experts" if m == "all" else
                    f"{'Algorithm 1' if m == 'alg1' else m} k={stats.frac_label(f) if given(f) else int(k)}")
                   for m, f, k in zip(comp["method"], comp["k_frac"], comp["k"])]
    comp["col"] = [f"n={int(n)}" if given(n) else "any n" for n in comp["n"]]
    comp["cell"] = [f"{pm(o, c)} / {num(p_)}" for o, c, p_ in zip(comp["ours"], comp["ours_ci"], comp["paper"])]
    order = list(dict.fromkeys(comp["row"]))
    cols = sorted(set(comp["col"]), key=lambda c: (c == "any n", int(c[2:]) if c != "any n" else 0))
    table = comp.pivot_table(index="row", columns="col", values="cell", aggfunc="first").reindex(order)[cols]
    return table.fillna("–").reset_index().rename(columns={"row": "ours ± 95 % / paper"})


def z_table(selection: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for renorm in sorted(set(selection["renormalize"])):
        pairs = alg1_vs_random(selection, renorm)
        for n, g in pairs.groupby("n"):
            z = g["z"][g["z"].map(math.isfinite)]
            rows.append({"n": int(n), "variant": plots.VARIANTS[renorm], "(seed, k) pairs": len(g),
                         "Alg1 > random": int((g["accuracy"] > g["accuracy_random"]).sum()),
                         "min z": num(z.min(), 2) if len(z) else "–",
                         "median z": num(z.median(), 2) if len(z) else "–",
                         "worst Δ": num((g["accuracy"] - g["accuracy_random"]).min(), 3, signed=True)})
    return pd.DataFrame(rows)


def selection_section(ctx: Context) -> Section:
    sel = ctx.frames[SELECTION.name]
    blocks = figure(ctx, "fig1_selection_vs_fraction") + figure(ctx, "fig2_selection_vs_n")
    pivot = pivot_vs_paper(ctx)
    if pivot is None:
        blocks.append(Block("text", text=f"The paper reports no numbers on {ctx.study.dataset}."))
    else:
        images = int(sel["images"].min())
        blocks += [Block("table", frame=pivot, caption=(
            f"Ours: mean over {sel['seed'].nunique()} training seed(s) ± the 95 % interval (spread over "
            f"seeds and sampling of the {images:,} test images); paper: read off its plots (±0.003)."
            " Rows: Algorithm 1 without renormalization and random k-subsets (mean of 10 seeds).")),
                   trace(ctx, [SELECTION.name])]
    images = int(sel["images"].min())
    blocks += [Block("table", frame=z_table(sel), caption=(
        "Algorithm 1 against random at every k evaluated, per n: z = (Alg1 − random mean) / random std. "
        f"The paper's table 10 gives z on 10,000 test images; for the same accuracy gap z grows like the "
        f"square root of the test-set size, so z on our {images:,} images is about "
        f"√(10,000/{images:,}) = {math.sqrt(10_000 / images):.1f}× smaller (docs/study.md §4)."))]
    means = stats.mean_over_seeds(sel)
    tidy = means.sort_values(["renormalize", "method", "k_frac", "n"])[
        ["n", "k", "method", "renormalize", "accuracy", "ci", "std", "seeds"]]
    tidy = tidy.assign(accuracy=tidy["accuracy"].map(num), ci=tidy["ci"].map(num), std=tidy["std"].map(num))
    blocks.append(Block("table", frame=tidy, limit=TABLE_HEAD, link=tables.path(ctx.tables_dir, SELECTION.name),
                        caption=("Every (n, k, method) of selection.csv, mean over seeds (ci: 95 % half-width): the "
                                 f"first {TABLE_HEAD} of {len(tidy):,} rows; the table per seed is selection.csv")))
    ablation = renormalized_table(means, ctx.study.evaluate.fractions)
    if ablation is not None:
        blocks.append(Block("table", frame=ablation, caption=(
            "Ablation: combine weights renormalized over the kept experts (not in the paper).")))
    return Section("Algorithm 1 vs random (E3; paper figures 1 and 2)", blocks)


def renormalized_table(means: pd.DataFrame, fractions: list[float]) -> pd.DataFrame | None:
    if not means["renormalize"].any():
        return None
    rows = []
    for frac in sorted(fractions, reverse=True):
        alg = stats.at_fraction(means[means["method"] == "alg1"], frac)
        for n, g in alg.groupby("n"):
            plain, renorm = g.loc[~g["renormalize"], "accuracy"].mean(), g.loc[g["renormalize"], "accuracy"].mean()
            rows.append({"n": int(n), "k": stats.frac_label(frac), "Alg1 (paper)": num(plain),
                         "Alg1 renormalized": num(renorm), "Δ": diff(renorm, plain)})
    return pd.DataFrame(rows)


# ---- E2 ------------------------------------------------------------------------------------------
def oracle_section(ctx: Context) -> Section:
    title = "Oracle: best expert subsets (E2; paper table 1)"
    rows = oracle_rows(ctx.frames[SELECTION.name])
    blocks = figure(ctx, "fig4_oracle")
    if rows.empty:
        blocks.append(Block("text", text=(
            f"NOT RUN: no oracle rows (C(n, k) exceeds evaluate.oracle_limit = "
            f"{ctx.study.evaluate.oracle_limit} for every n).")))
        return Section(title, blocks)
    ref = paper.e2_oracle().set_index("n") if paper.REFERENCE.get(ctx.study.dataset) == "mnist" else pd.DataFrame()
    out = []
    for r in rows.itertuples():
        p = ref.loc[int(r.n)] if int(r.n) in ref.index else None
        out.append({"n": int(r.n), "k": int(r.k), "best ours": pm(r.oracle, r.ci, 4),
                    "best paper": num(p["oracle"], 4) if p is not None else "–",
                    "random ours": f"{num(r.random, 4)} (std {num(r.random_std, 4)})",
                    "random paper": f"{p['random']:.4f} (std {p['random_std']:.4f})" if p is not None else "–",
                    "distinct ours": num(float(r.distinct), 0), "distinct paper": num(int(p["distinct"])) if p is not None else "–",
                    "possible C(n,k)": num(int(r.possible))})
    blocks += [Block("table", frame=pd.DataFrame(out), caption=(
        "Best k-subset per test input (using the label) vs a random k-subset; ours ± 95 % interval; paper: "
        "MNIST, 10,000 test images (table). 'distinct': how many different best subsets the test set used "
        "(ours: per input, the correct subset with the largest margin; docs/study.md §4).")),
               trace(ctx, [SELECTION.name])]
    return Section(title, blocks)


# ---- E1 ------------------------------------------------------------------------------------------
def synthetic_section(ctx: Context) -> Section:
    blocks = figure(ctx, "fig3_synthetic_loss")
    loss = ctx.frames[SYNTHETIC_LOSS.name]
    if loss is None or loss.empty:
        blocks.append(Block("text", text="NOT RUN: synthetic_loss.csv missing or empty."))
    else:
        ref = paper.e1_plateaus().set_index(["tokens", "n"])["loss"]
        finals = e1_finals(loss)
        rows = [{"variance": f"{r.variance:g}", "tokens x dim": r.tokens, "n": int(r.n), "seeds": int(r.seeds),
                 "final loss ours ± 95 %": pm(r.final_loss, r.ci),
                 "plateau paper (±0.3)": num(ref.get((r.tokens, int(r.n)))),
                 "Δ": diff(r.final_loss, ref.get((r.tokens, int(r.n)))),
                 "constant predictor Var‖x‖₂": num(stats.constant_predictor_loss(r.variance))}
                for r in finals.itertuples()]
        blocks += [Block("table", frame=pd.DataFrame(rows), caption=(
            "Final training loss (mean of the last 10 % of steps; mean over seeds ± the 95 % t-interval, none "
            "with one seed) under both readings of the paper's "
            "N(0, 5I) (variance 5 and 25), beside its plateaus (read off its plot) and the loss of the best "
            "constant prediction, Var‖x‖₂.")), trace(ctx, [SYNTHETIC_LOSS.name])]
    blocks += figure(ctx, "fig3_proof_check")
    proof = ctx.frames[SYNTHETIC_PROOF.name]
    if proof is None or proof.empty:
        blocks.append(Block("text", text="NOT RUN: synthetic_proof.csv missing or empty."))
    else:
        frame = proof.sort_values(["variance", "tokens", "case", "a"])[
            ["variance", "tokens", "case", "a", "slot_gap", "norm_gap", "abs_error_A", "abs_error_B"]]
        frame = frame.assign(**{c: frame[c].map(lambda v: f"{v:.3g}") for c in frame.columns[3:]})
        blocks.append(Block("table", frame=frame, limit=TABLE_HEAD,
                            link=tables.path(ctx.tables_dir, SYNTHETIC_PROOF.name),
                            caption=("Proof check of the n = 1 models: gaps and absolute errors on the input pairs "
                                     f"(A, B), per scale a (the first {TABLE_HEAD} of {len(frame)} rows).")))
    return Section("Synthetic ‖x‖₂: Theorem 1 (E1; paper appendix C)", blocks)


# ---- E4 ------------------------------------------------------------------------------------------
def latency_section(ctx: Context) -> Section:
    lat = ctx.frames[LATENCY.name]
    title = "Inference time of the selective path (E4; paper table 3)"
    blocks = figure(ctx, "fig5_latency")
    if lat is None or lat.empty:
        blocks.append(Block("text", text="NOT RUN: latency.csv missing or empty."))
        return Section(title, blocks)
    ref = paper.e4_latency()
    fracs = sorted(f for f in set(lat["k_frac"].round(6)) | set(ref["k_frac"]) if f < 1)
    rows = []
    order = lambda key: (key[0][0].startswith(WIDE), key[0][1], key[0][2], key[0][0])   # noqa: E731
    for (config, n, batch), g in sorted(lat.groupby(["config", "n", "batch"]), key=order):
        row = {"config": config, "n": int(n), "batch": int(batch),
               "ms at k=n": num(g.loc[g["k"] == n, "median_ms"].mean(), 2)}
        for f in fracs:
            ours = g.loc[(g["k_frac"] - f).abs() < 1e-6, "ratio"].mean()
            theirs = ref.loc[(ref["batch"] == batch) & ((ref["k_frac"] - f).abs() < 1e-6), "ratio"].mean()
            row[f"k/n={f:g}"] = f"{num(ours, 2)} / {num(theirs, 2)}" if given(theirs) else num(ours, 2)
        rows.append(row)
    blocks += [Block("table", frame=pd.DataFrame(rows), caption=(
        "Time with k experts running / time with all n: ours / paper where the paper measured the same k/n "
        f"and batch size. Paper (table): {paper.LATENCY_SETTING}. Ideal: k/n. 'wide' is the paper's layer "
        "(random weights); the other rows are our trained models. Claims e_wide, e_trained and e_gpu judge "
        "each separately.")), trace(ctx, [LATENCY.name])]
    return Section(title, blocks)


# ---- training ------------------------------------------------------------------------------------
def training_section(ctx: Context) -> Section:
    train = ctx.frames[TRAINING.name]
    blocks = figure(ctx, "fig6_training_curves") + figure(ctx, "fig6_all_experts_vs_n")
    ref_name = paper.REFERENCE.get(ctx.study.dataset)
    ref = paper.headlines(ref_name) if ref_name else pd.DataFrame(columns=["n", "method", "accuracy"])
    ref = ref[(ref["method"] == "all") & ref["n"].notna()]
    ref = dict(zip(ref["n"].astype(int), ref["accuracy"]))
    images = int(ctx.frames[SELECTION.name]["images"].min())
    g = train.groupby("n").agg(seeds=("seed", "nunique"), hidden=("expert_hidden", "first"),
                               experts=("params_experts", "first"), total=("params_total", "first"),
                               steps=("steps", "max"), acc=("test_accuracy", "mean"),
                               acc_std=("test_accuracy", "std"))
    timing = ctx.frames.get(TRAINING_TIME.name)      # the trainings' timing.json (this host's facts)
    wall = timing.groupby("n")["wall_time_s"].sum() if timing is not None and len(timing) else pd.Series(dtype=float)
    rows = [{"n": int(n), "seeds": int(r.seeds), "expert hidden": num(int(r.hidden)),
             "expert params": num(int(r.experts)), "total params": num(int(r.total)), "steps": num(int(r.steps)),
             "test acc ours ± 95 %": pm(r.acc, stats.half_width(r.acc, r.acc_std, r.seeds, images)),
             "paper (all experts)": num(ref.get(int(n))), "Δ": diff(r.acc, ref.get(int(n))),
             "train time s (all seeds)": num(wall.get(n), 0)} for n, r in g.iterrows()]
    blocks += [Block("table", frame=pd.DataFrame(rows), caption=(
        "One row per n: the real parameter counts at the fixed budget (the floor makes it inexact at large n) "
        "and the all-experts test accuracy (mean over seeds); the train time from each run's timing.json.")),
        trace(ctx, [TRAINING.name, TRAINING_TIME.name])]
    return Section("Training and the fixed budget", blocks)
