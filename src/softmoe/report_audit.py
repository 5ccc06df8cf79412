"""The report's audit sections: the discrepancies to the paper with the hypotheses the
pipeline tests, the reproduction check against the committed metrics, and the provenance of this
run (git, machine, versions, seeds, md5 of every file it describes, wall times)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from softmoe import paper, provenance, stages, stats, tables
from softmoe.discrepancies import (SCALE_MODEL, UNEXPLAINED, e1_finals, oracle_rows, paper_reading,
                                   summary)
from softmoe.render import Block, Section, given, num, pm
from softmoe.report_context import Context, trace

REPRO_TOLERANCE = 0.01   # reproduction check: metrics within this of the committed ones


# ---- discrepancies -------------------------------------------------------------------------------
def read_discrepancies(ctx: Context) -> pd.DataFrame | None:
    """discrepancies.csv as the claims step wrote it (None when absent)."""
    path = ctx.tables_dir / "discrepancies.csv"
    return pd.read_csv(path) if path.is_file() else None


def discrepancy_counts(ctx: Context) -> dict:
    """The counts of discrepancies.csv (each comparison once), or claims.json's when the CSV is
    absent or from before the `status` column."""
    found = read_discrepancies(ctx)
    if found is None or "status" not in found.columns:
        return dict(ctx.claims.get("discrepancies", {"compared": 0, "beyond_interval": 0}))
    return summary(found)


def _scale_label(ctx: Context, experiment: str) -> str:
    """Ours and the paper's scale, for the caption of an experiment's comparison table."""
    p, sel = ctx.study, ctx.frames["selection"]
    if experiment in ("E2", "E3"):
        ps = paper.SETTING.get(paper.REFERENCE.get(p.dataset), {})
        train = f"{p.dataset_entry.train_size:,}" if p.dataset_entry.train_size else "all"
        images = sel["images"].dropna()
        test = f"{int(images.min()):,}" if len(images) else "all"
        seeds = sel["seed"].nunique()
        return (f"ours: {p.dataset}, {train} training / {test} test images, {seeds} seed(s); paper: "
                f"{ps.get('train_size', 0):,} / {ps.get('test_size', 0):,}, {paper.TRAINING_SEEDS} seed")
    if experiment == "E1":
        loss = ctx.frames["synthetic_loss"]
        seeds = loss["seed"].nunique() if loss is not None and "seed" in loss.columns else 1
        return (f"ours: {p.synthetic.steps} steps × {p.synthetic.batch_size:,} inputs, {seeds} seed(s); paper: "
                f"{paper.SYNTHETIC_STEPS} × {paper.SYNTHETIC_BATCH:,}")
    if experiment == "E4":
        device = (ctx.hardware or {}).get("device", "this machine")
        return f"ours: the E4 layer at width ×{p.latency.wide.width:g} on {device}; paper: {paper.LATENCY_SETTING}"
    return ""


def _formatted(g: pd.DataFrame) -> pd.DataFrame:
    digits = [0 if q.startswith("distinct") else 3 for q in g["quantity"]]
    return g.assign(ours=[pm(o, e, d) for o, e, d in zip(g["ours"], g["ours_err"], digits)],
                    paper=[pm(p_, e, d) for p_, e, d in zip(g["paper"], g["paper_err"], digits)],
                    diff=g["diff"].map(lambda v: num(v, 3, signed=True)),
                    n=g["n"].map(lambda v: num(int(v)) if given(v) else "–"),
                    k=g["k"].map(lambda v: num(int(v)) if given(v) else "–"))[
        ["quantity", "n", "k", "ours", "paper", "diff", "status"]]


def discrepancy_section(ctx: Context) -> Section:
    title = "Discrepancies: our numbers beside the paper's"
    found = read_discrepancies(ctx)
    csv = ("CSV", ctx.tables_dir / "discrepancies.csv")
    if found is None or "status" not in found.columns:
        return Section(title, [Block("text", text=(
            "NOT RUN: discrepancies.csv missing or written by an older claims step (no `status` column); rerun "
            "`softmoe claims`.")), trace(ctx, [], ("claims",), [csv])])
    d = summary(found)
    counted = found[found["counted"].astype(bool)]
    listed = found[~found["counted"].astype(bool)]
    blocks = [Block("text", text=(
        f"{d['compared']} numbers compared with the paper's, each comparison counted once, with our 95 % interval "
        f"(plus the paper's reading error: ±0.003 accuracy and ±0.3 loss for plot readings). "
        f"{d['beyond_interval']} lie beyond it: {d['explained_by_scale']} on the side the scale model predicts "
        f"(explained by scale), {d['unexplained']} unexplained. {d['better_than_paper']} are better than a one-sided "
        f"claim of the paper (e.g. a time ratio below its): not discrepancies. {len(listed)} more are listed below "
        "but not counted: the same comparison counted elsewhere, the variance-5 reading of N(0, 5I), counts and "
        "rows without an interval of ours."))]
    fewer = run_is_smaller(ctx)
    blocks.append(Block("text", text=("Scale model: " + SCALE_MODEL + "." if fewer else
                                      "This run is at the paper's scale: no difference is explained by scale.")))
    for exp in sorted(set(found["experiment"])):
        g = counted[counted["experiment"] == exp]
        if len(g):
            n_beyond = int(g["beyond"].astype(bool).sum())
            n_unexpl = int((g["status"] == UNEXPLAINED).sum())
            blocks.append(Block("table", frame=_formatted(g), collapsed=len(g) > 12, caption=(
                f"{exp}, absolute numbers ({_scale_label(ctx, exp)}): {len(g)} comparison(s), {n_beyond} beyond the "
                f"interval, {n_unexpl} unexplained")))
        blocks += [Block("text", text=t) for t in hypotheses(ctx, exp)]
    if not listed.empty:
        frame = _formatted(listed)
        frame.insert(0, "experiment", listed["experiment"].values)
        blocks.append(Block("table", frame=frame, collapsed=True,
                            caption=f"Listed as context, not counted ({len(listed)} rows)"))
    tested = hypothesis_rows(ctx)
    if tested is not None:
        blocks.append(Block("table", frame=tested, caption=(
            "Hypotheses tested by runs (metrics/hypotheses.json): each variant against the main grid on the "
            "quantity it should explain.")))
    blocks.append(trace(ctx, [], ("claims",), [csv]))
    return Section(title, blocks)


def run_is_smaller(ctx: Context) -> bool:
    """Fewer training images than the paper's, or a narrower E4 layer: the scale model applies."""
    ps = paper.SETTING.get(paper.REFERENCE.get(ctx.study.dataset), {})
    train = ctx.study.dataset_entry.train_size
    return bool(ps and train and train < ps["train_size"]) or ctx.study.latency.wide.width < 1


def hypothesis_rows(ctx: Context) -> pd.DataFrame | None:
    """metrics/hypotheses.json as a table (None when the hypotheses step has not run)."""
    path = ctx.claims_path.parent / "hypotheses.json"
    obj = tables.read_json(path, "rerun the hypotheses step") if path.is_file() else None
    found = (obj or {}).get("hypotheses", [])
    if isinstance(found, dict):
        found = [{"key": k, **v} for k, v in found.items()]
    rows = []
    for h in (x for x in found if isinstance(x, dict)):
        runs = h.get("runs")
        lo, hi = h.get("lo"), h.get("hi")
        explains = h.get("explains")
        rows.append({"hypothesis": h.get("name") or h.get("key", "–"), "statement": h.get("statement", "–"),
                     "quantity": h.get("quantity", "–"),
                     "effect (95 % interval)": (num(h.get("effect"), 3, True) +
                                                (f" ({num(lo, 3, True)} to {num(hi, 3, True)})"
                                                 if lo is not None and hi is not None else "")),
                     "explains": f"{explains:.0%}" if isinstance(explains, (int, float)) else str(explains or "–"),
                     "runs": len(runs) if isinstance(runs, (list, tuple)) else (runs or "–")})
    return pd.DataFrame(rows) if rows else None


def hypotheses(ctx: Context, experiment: str) -> list[str]:
    """What may explain an experiment's differences, and what the pipeline measured about it."""
    if experiment == "E1":
        finals = e1_finals(ctx.frames["synthetic_loss"])
        ones = finals[finals["n"] == 1]
        accepted = paper_reading()
        listing = "; ".join(f"variance {r.variance:g}, {r.tokens}: n=1 plateau {r.final_loss:.2f} vs constant "
                            f"predictor {stats.constant_predictor_loss(r.variance):.2f}" for r in ones.itertuples())
        return [("Data scale. The paper writes x ~ N(0, 5I). Its 2×5 n = 1 plateau (≈12) equals Var‖x‖₂ at "
                 f"variance 25 ({stats.constant_predictor_loss(25):.1f}), not at variance 5 "
                 f"({stats.constant_predictor_loss(5):.1f}): a single expert learns the best constant. Both "
                 f"readings ran: {listing}. So the comparison counts variance {accepted:g} only; the other reading "
                 "is listed as context."),
                ("Steps. Large n still descends at the end of the paper's 500 steps here; the paper's n = 10 "
                 "plateau (0.9) may need longer training (try `dvc exp run -S synthetic.steps=3000`).")]
    if experiment == "E2":
        return [oracle_hypothesis(ctx)]
    if experiment == "E3":
        out = []
        cal = calibration_rows(ctx)
        if not cal.empty:
            out.append("Steps vs epochs, measured: " + calibration_comment(cal) +
                       " (docs/study.md §7, docs/calibration.md).")
        ds = ctx.study.dataset
        ps = paper.SETTING.get(paper.REFERENCE.get(ds), {})
        train_size = ctx.study.dataset_entry.train_size
        if ps and train_size and train_size < ps["train_size"]:
            out.append(f"Training-set size (E2 and E3): {ds} trains on {train_size:,} images instead of "
                       f"{ps['train_size']:,}; the scale model above says which differences it should explain. The "
                       "paper's scale runs with `snakemake --cores all --configfile config/mnist.yaml` and the full "
                       "MNIST files in data/raw/mnist.")
        return out
    if experiment == "E4":
        return ["Hardware and implementation: the paper timed an RTX 2080 Ti; here the layer runs on the "
                "machine in Provenance. A ratio below the paper's beats its one-sided claim; see the claims on "
                "time and docs/study.md §5 E4."]
    return []


def oracle_hypothesis(ctx: Context) -> str:
    """What the distinct-subset count says, from ours and the paper's at the largest common n."""
    rows = oracle_rows(ctx.frames["selection"])
    ref = paper.e2_oracle().set_index("n")
    rows = rows[rows["n"].isin(ref.index)]
    text = ("Oracle definition: our 'distinct best subsets' counts, per test input, the correct k-subset with the "
            "largest logit margin; the paper does not say how it breaks ties between several correct subsets. The "
            "count has no interval and is reported, not counted.")
    if rows.empty:
        return text
    r = rows.iloc[-1]
    n, ours, theirs = int(r["n"]), int(r["distinct"]), int(ref.loc[int(r["n"]), "distinct"])
    images = int(ctx.frames["selection"]["images"].min())
    full = paper.SETTING["mnist"]["test_size"]
    if ours > theirs and images < full:
        text += (f" At n = {n}: ours {ours:,} distinct subsets on {images:,} test images against the paper's "
                 f"{theirs:,} on {full:,}, i.e. more distinct subsets on fewer images; a larger test set can only "
                 "add subsets, so the test-set size does not explain it. It suggests experts that are less "
                 "specialized at this scale (several subsets are correct for an input and the largest-margin one "
                 "varies) or another tie-breaking rule in the paper; neither is measured here.")
    else:
        text += f" At n = {n}: ours {ours:,} on {images:,} test images, the paper's {theirs:,} on {full:,}."
    return text


def calibration_rows(ctx: Context) -> pd.DataFrame:
    """Per n of the calibration step: all experts, Alg1 and random at k = n/4 of the models trained
    for the paper's epochs, beside the grid's models of the same n and seed."""
    cal, sel = ctx.frames["calibration"], ctx.frames["selection"]
    cols = ["n", "epochs", "steps", "all", "alg1", "random", "grid_steps", "grid_all", "grid_alg1", "grid_random"]
    if cal is None or cal.empty:
        return pd.DataFrame(columns=cols)
    first = ctx.study.calibration.seed
    grid_steps = int(ctx.frames["training"]["steps"].max())

    def at(frame, method):
        rows = frame[(frame["method"] == method) & ~frame["renormalize"].astype(bool)]
        rows = rows if method == "all" else stats.at_fraction(rows, 0.25)
        return float(rows["accuracy"].mean()) if len(rows) else float("nan")

    out = []
    for n, g in cal.groupby("n"):
        grid = sel[(sel["n"] == n) & (sel["seed"] == first)]
        out.append({"n": int(n), "epochs": int(g["epochs"].iloc[0]), "steps": int(g["steps"].iloc[0]),
                    "all": at(g, "all"), "alg1": at(g, "alg1"), "random": at(g, "random"), "grid_steps": grid_steps,
                    "grid_all": at(grid, "all"), "grid_alg1": at(grid, "alg1"), "grid_random": at(grid, "random")})
    return pd.DataFrame(out, columns=cols)


def calibration_comment(cal: pd.DataFrame) -> str:
    """The paper-epoch models beside the grid's, with where (b) would not hold at the paper's epochs."""
    parts, fails = [], []
    for r in cal.itertuples():
        parts.append(f"n={r.n}: {r.steps:,} steps ({r.epochs} epochs) give all {num(r.all)}, Alg1 n/4 {num(r.alg1)} "
                     f"vs random {num(r.random)}; the grid's {r.grid_steps:,} steps give {num(r.grid_all)}, "
                     f"{num(r.grid_alg1)} vs {num(r.grid_random)}")
        if r.alg1 < r.random:
            fails.append(f"n = {r.n}: Alg1 {num(r.alg1)} < random {num(r.random)}")
    text = "; ".join(parts) + "."
    if fails:
        text += (f" At the paper's {cal['epochs'].iloc[0]} epochs, claim (b) would not hold on this data ("
                 + "; ".join(fails) + "): the experts need the paper's number of steps to specialize here.")
    return text


# ---- reproduction check ------------------------------------------------------------------------
def reproduction(ctx: Context, root: Path, metrics_rel: str) -> tuple[str, Section]:
    """This run's metrics against the ones committed at git HEAD."""
    current = tables.read_json(root / metrics_rel, "rerun `softmoe summarize`")
    committed = provenance.committed_json(root, metrics_rel)
    title = "Reproduction check: this run against the committed metrics"
    if current is None or committed is None:
        why = "no committed metrics at git HEAD" if committed is None else f"{metrics_rel} missing"
        return f"not possible ({why})", Section(title, [Block("text", text=f"Not possible: {why}.")])
    ours, theirs = _flat(current.get("experts", {})), _flat(committed.get("experts", {}))
    identical = ours == theirs
    ours, theirs = _accuracies(ours), _accuracies(theirs)
    common = sorted(set(ours) & set(theirs))
    deltas = {k: ours[k] - theirs[k] for k in common}
    worst = max(deltas, key=lambda k: abs(deltas[k])) if deltas else None
    big = max((abs(v) for v in deltas.values()), default=0.0)
    if identical:
        verdict = "identical"
    elif not common:
        verdict = "different (no accuracy in common)"
    elif big <= REPRO_TOLERANCE:
        verdict = f"accuracies within tolerance (largest difference {big:.4f} ≤ {REPRO_TOLERANCE:g})"
    else:
        verdict = f"different (largest accuracy difference {big:.4f}, at {worst})"
    if _seeds(current) != _seeds(committed):
        verdict += f"; the committed metrics average {_seeds(committed)} training seed(s), this run {_seeds(current)}"
    rows = [(label, obj.get("machine", {}).get("cpu", "not recorded"), _seeds(obj))
            for label, obj in (("this run", current), ("committed (git HEAD)", committed))]
    blocks = [Block("text", text=(f"{metrics_rel}: {verdict}; {len(common)} accuracies compared, "
                                  f"{len(set(ours) ^ set(theirs))} present on one side only. Runs are bit-identical "
                                  "on one machine type; another CPU model gives other bytes and metrics that differ "
                                  "in the third decimal (README, Reproducibility).")),
              Block("table", frame=pd.DataFrame(rows, columns=["", "machine (CPU)", "training seeds"]))]
    if deltas:
        top = sorted(deltas, key=lambda k: -abs(deltas[k]))[:15]
        blocks.append(Block("table", frame=pd.DataFrame(
            [{"metric": k, "this run": num(ours[k], 5), "committed": num(theirs[k], 5), "Δ": num(deltas[k], 5, True)}
             for k in top]), caption="The largest differences", collapsed=True))
    return verdict, Section(title, blocks)


def _seeds(metrics: dict) -> str:
    """The training seeds per n of a metrics/<dataset>.json (as recorded for its first n)."""
    experts = metrics.get("experts", {})
    return str(next(iter(experts.values()), {}).get("seeds", "–"))


def _accuracies(flat: dict[str, float]) -> dict[str, float]:
    """The accuracies among flattened metrics (all, alg1, random, oracle accuracy): the numbers
    compared with a tolerance; z, counts and intervals scale differently."""
    return {k: v for k, v in flat.items() if k.rsplit(".", 1)[-1] in ("all", "alg1", "random", "accuracy")}


def _flat(obj, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flat(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


# ---- provenance ------------------------------------------------------------------------------------
def provenance_section(ctx: Context, hashed: list[Path], benchmarks_dir: Path) -> Section:
    git = provenance.git_state(ctx.params_path.resolve().parent)
    run = provenance.run_info(ctx.params_path)
    dirty = {True: f"dirty: {len(git['modified'])} modified tracked file(s), {git['untracked']} untracked",
             False: "clean", None: "–"}[git["dirty"]]
    p = ctx.study
    facts = [("command", run["command"]), ("started", run["start"]), ("report written", run["end"]),
             ("reproduce this", provenance.reproduce_line(git, ctx.params_path)),
             ("git commit", git["commit"]), ("working tree (when the report was written)", dirty),
             ("params file", f"{ctx.params_path} (md5 {ctx.md5(ctx.params_path)})"),
             *((f"machine.{k}", str(v)) for k, v in provenance.machine().items()),
             ("training device(s)", ", ".join(sorted({str(d) for d in ctx.frames['training']['device']}))),
             *((f"latency hardware.{k}", str(v)) for k, v in (ctx.hardware or {}).items()),
             ("training seeds (params.seeds)", ", ".join(map(str, p.seeds))),
             ("random-subset seeds (evaluate.random_seeds)", ", ".join(map(str, p.evaluate.random_seeds))),
             ("synthetic seed (synthetic.seed)", str(p.synthetic.seed)),
             (f"data split seed (datasets.{p.dataset}.split_seed)",
              "–" if p.dataset_entry.split_seed is None else str(p.dataset_entry.split_seed))]
    blocks = [Block("table", frame=pd.DataFrame(facts, columns=["", "value"]))]
    if git["modified"]:
        blocks.append(Block("pre", text="\n".join(git["modified"][:50]), caption="Modified tracked files"))
    if any("dvc.lock" == m for m in git["modified"]) or not git["dirty"]:
        blocks.append(Block("text", text=(
            "dvc.lock is rewritten by `dvc commit` after a successful Snakemake run, i.e. after this report; "
            "the hashes below are computed from the files themselves when the report was written.")))
    code = sorted({c for step in stages.STEPS for c in stages.code(step)})
    hashes = provenance.file_hashes([*hashed, *tables_and_figures(ctx), *code, ctx.params_path])
    blocks.append(Block("table", frame=hashes.assign(bytes=hashes["bytes"].map(num)), collapsed=True,
                        caption=f"md5 of the {len(hashes)} files this report describes (data, models, tables, "
                                "metrics, figures, code), computed when it was written"))
    blocks.append(Block("table", frame=provenance.versions(), caption="Package versions", collapsed=True))
    blocks += wall_blocks(benchmarks_dir, ctx.frames["training"])
    return Section("Provenance", blocks)


def tables_and_figures(ctx: Context) -> list[Path]:
    return [ctx.tables_dir, ctx.figures_dir, ctx.claims_path]


def wall_blocks(benchmarks_dir: Path, train: pd.DataFrame) -> list[Block]:
    bench = provenance.wall_times(benchmarks_dir) if Path(benchmarks_dir).is_dir() else pd.DataFrame()
    if bench.empty:
        return [Block("text", text=(f"Wall time per step: NOT RUN (no Snakemake benchmark files under "
                                    f"{benchmarks_dir}). Training alone (training.csv): "
                                    f"{train['wall_time_s'].sum():,.0f} s."))]
    per_rule = bench.groupby("rule").agg(jobs=("job", "count"), total_s=("s", "sum"), mean_s=("s", "mean"),
                                         max_s=("s", "max"), max_rss_mb=("max_rss_mb", "max")).reset_index()
    total = bench["s"].sum()
    per_rule = per_rule.assign(**{c: per_rule[c].map(lambda v: num(v, 1)) for c in
                                  ["total_s", "mean_s", "max_s", "max_rss_mb"]})
    jobs = bench.assign(s=bench["s"].map(lambda v: num(v, 1)), max_rss_mb=bench["max_rss_mb"].map(lambda v: num(v, 0)))
    return [Block("table", frame=per_rule, caption=(
                f"Wall time per rule from {len(bench)} Snakemake benchmark files: total {total:,.1f} s of job time "
                "(jobs may have run in parallel).")),
            Block("table", frame=jobs, caption="Wall time of every job", collapsed=True)]
