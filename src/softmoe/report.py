"""The audit-ready report: a verdict box, the setting, the claims (rendered from
metrics/claims.json, judged by the claims step), every figure with its numbers beside the
paper's and their intervals, the differences to the paper, a reproduction check against the
committed metrics, and the provenance of this run with the md5 of every file it describes,
computed when the report is written. Layout only: the judging is claims.py's, the drawing
figures.py's, the rendering render.py's. This module holds the front (verdict, setting, claims,
scope) and the order of the sections; report_experiments.py the section of each experiment,
report_audit.py the discrepancies, reproduction check and provenance."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from softmoe import atomic, claims, paper, provenance, tables
from softmoe.errors import UserError
from softmoe.params import Dataset, Study, Synthetic, Wide
from softmoe.render import Block, Section, render_html, render_markdown
from softmoe.report_audit import discrepancy_section, provenance_section, reproduction
from softmoe.report_context import Context, trace
from softmoe.report_experiments import (latency_section, oracle_section, selection_section, synthetic_section,
                                        training_section)

STEPS_MATCH = 0.95       # the setting warns when a run has fewer than 95 % of the paper's steps


# ---- the verdict and the claims -----------------------------------------------------------------
def verdict_section(ctx: Context, repro: str) -> Section:
    c = ctx.claims
    counts = c["counts"]
    items = [(cl["verdict"], f"({key}) {cl['statement']} — ours: {cl['ours']}"
              + (f" [{cl['evidence']}]" if cl["verdict"] == claims.NOT_RUN and cl["evidence"] else ""))
             for key, cl in ordered(c)]
    scope = c["scope"]
    not_run = [v["experiment"] for v in scope.values() if v["status"] == "not run here"]
    diffs = c["discrepancies"]
    head = (f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['NOT RUN']} NOT RUN on "
            f"{ctx.study.dataset} ({len(ctx.study.seeds)} training seed(s)). "
            f"{diffs['beyond_interval']} of {diffs['compared']} numbers compared with the paper differ "
            f"beyond their interval. Reproduction check: {repro}.")
    blocks = [Block("verdict", text=head, items=items)]
    if not_run:
        blocks.append(Block("text", text="Not run here (see Scope): " + "; ".join(not_run) + "."))
    blocks.append(trace(ctx, [], ("claims",), [("claims", ctx.claims_path)]))
    return Section("Verdict", blocks)


def ordered(claims_json: dict) -> list[tuple[str, dict]]:
    """The claims in the order the claims step judged them (JSON objects are written sorted)."""
    return [(key, claims_json["claims"][key]) for key in claims_json["order"]]


def claims_section(ctx: Context) -> Section:
    rows = [{"": key, "claim": cl["statement"], "judged on": ", ".join(f"{k} {v}" for k, v in cl["scope"].items()),
             "ours": cl["ours"], "paper": cl["paper"], "tolerance (why)": f"{cl['tolerance']} ({cl['why']})",
             "verdict": cl["verdict"], "evidence": cl["evidence"]} for key, cl in ordered(ctx.claims)]
    return Section("Claims", [
        Block("text", text=("Judged by the claims step on this run's tables (metrics/claims.json, a DVC "
                            "metric: `dvc metrics diff` shows a verdict that changed).")),
        Block("table", frame=pd.DataFrame(rows)),
        trace(ctx, ["selection", "training", "synthetic_loss", "latency"], ("claims",), [("claims", ctx.claims_path)])])


def scope_section(ctx: Context) -> Section:
    rows = [{"experiment": f"{key}: {v['experiment']}", "paper": v["paper"], "status": v["status"],
             "differences beyond interval": v["differences_beyond_interval"], "config": v["config"],
             "command": v["command"]} for key, v in ctx.claims["scope"].items()]
    return Section("Scope: every experiment of the paper", [
        Block("table", frame=pd.DataFrame(rows), caption=(
            "Reproduced: every number within its interval; with differences: see Discrepancies; not run "
            "here: the params file and command that run it (CIFAR and ImageNet need a GPU cluster, "
            "docs/scale-out.md)."))])


# ---- the setting -------------------------------------------------------------------------------
def setting_section(ctx: Context) -> Section:
    p, ds, train = ctx.study, ctx.study.dataset, ctx.frames["training"]
    ref = paper.REFERENCE.get(ds)
    ps = paper.SETTING.get(ref, {})
    entry = p.dataset_entry
    syn, wide = p.synthetic, p.latency.wide
    steps = sorted({int(s) for s in train["steps"].dropna()})
    epochs = sorted({int(e) for e in train["epochs"].dropna()})
    images = ctx.frames["selection"]["images"].dropna()
    device = ctx.hardware.get("device", "–") if ctx.hardware else "latency not run"
    train_images = "full split" if entry.train_size is None else entry.train_size
    test_images = int(images.min()) if len(images) else "full split" if entry.test_size is None else entry.test_size
    rows = [
        ("dataset", f"{ds} ({entry.source})", ref or "not used by the paper"),
        ("train / test images", f"{train_images} / {test_images}",
         f"{ps.get('train_size', '–')} / {ps.get('test_size', '–')}"),
        ("experts n (fixed budget)", ", ".join(map(str, p.experts)), ", ".join(map(str, ps.get("experts", [])))),
        ("training seeds", ", ".join(map(str, p.seeds)), str(paper.TRAINING_SEEDS)),
        ("epochs (as run)", ", ".join(map(str, epochs)) or "–", str(ps.get("epochs", "–"))),
        ("optimizer steps (as run)", ", ".join(map(str, steps)) or "–", str(ps.get("steps") or "–")),
        ("batch size", str(p.train.batch_size), str(ps.get("batch_size", "–"))),
        ("optimizer", f"{p.train.optimizer}, lr {p.train.lr:g}, {p.train.schedule}",
         ps.get("optimizer", "–")),
        ("random-subset seeds", str(len(p.evaluate.random_seeds)), str(paper.RANDOM_SEEDS)),
        ("synthetic: variance; steps × batch", f"{', '.join(map(str, syn.variances))}; {syn.steps} × "
                                               f"{syn.batch_size:,}",
         f"5 (or 25, see §5 E1 of docs/study.md); {paper.SYNTHETIC_STEPS} × {paper.SYNTHETIC_BATCH:,}"),
        ("latency model", f"n={wide.experts}, width ×{wide.width:g}, {device}",
         paper.LATENCY_SETTING),
    ]
    blocks = [Block("table", frame=pd.DataFrame(rows, columns=["", "this run", "paper"]),
                    caption="The setting of this run against the paper's.")]
    warnings = scale_warnings(ds, entry, syn, wide, ps, steps, epochs)
    if warnings:
        blocks.insert(0, Block("warn", text="Not the paper's scale: " + "; ".join(warnings) +
                               ". Compare shapes and claims, not absolute numbers."))
    return Section("Setting", blocks)


def scale_warnings(ds: str, entry: Dataset, syn: Synthetic, wide: Wide, ps: dict, steps: list[int],
                   epochs: list[int]) -> list[str]:
    """How this run (dataset ds, its entry; the synthetic and wide-layer settings; the steps and
    epochs trained) falls short of the paper's setting ps."""
    out = []
    if not ps:
        out.append(f"the paper has no results on {ds}")
    if entry.train_size is not None and ps and entry.train_size < ps["train_size"]:
        out.append(f"{entry.train_size:,} training images instead of {ps['train_size']:,}")
    if entry.test_size is not None and ps and entry.test_size < ps["test_size"]:
        out.append(f"{entry.test_size:,} test images instead of {ps['test_size']:,}")
    if ps and epochs and epochs != [ps["epochs"]]:
        out.append(f"{'/'.join(map(str, epochs))} epochs instead of {ps['epochs']}")
    if ps and ps.get("steps") and steps and max(steps) < STEPS_MATCH * ps["steps"]:
        out.append(f"{max(steps):,} optimizer steps instead of {ps['steps']:,}")
    if syn.steps < paper.SYNTHETIC_STEPS or syn.batch_size < paper.SYNTHETIC_BATCH:
        out.append(f"synthetic runs of {syn.steps} steps × {syn.batch_size:,} inputs instead of "
                   f"{paper.SYNTHETIC_STEPS} × {paper.SYNTHETIC_BATCH:,}")
    if wide.width < 1:
        out.append(f"latency model at width ×{wide.width:g} of the paper's")
    return out


# ---- entry point -----------------------------------------------------------------------------------
def _check_dataset(dataset: str, frames: dict, tables_dir: Path) -> None:
    for name in ("selection", "training"):
        found = sorted(set(frames[name]["dataset"].astype(str)))
        if found != [dataset]:
            raise UserError(f"{tables.path(tables_dir, name)}: holds dataset(s) {found}, but params 'dataset' is "
                            f"{dataset!r}; pass the matching --tables folder")


def build_report(study: Study, params_path: Path, tables_dir: Path, figures_dir: Path, claims_json: Path,
                 benchmarks_dir: Path, hashed: list[Path], html: Path, md: Path) -> None:
    """Write the HTML and Markdown report from the tables, figures, claims and benchmark files."""
    ctx = Context(study, params_path, tables_dir, figures_dir, claims_json)
    _check_dataset(study.dataset, ctx.frames, tables_dir)
    root = Path(provenance.git_state(Path(params_path).resolve().parent)["root"])
    metrics_rel = f"metrics/{study.dataset}.json"
    repro_verdict, repro = reproduction(ctx, root, metrics_rel)
    sections = [verdict_section(ctx, repro_verdict), setting_section(ctx), claims_section(ctx), scope_section(ctx),
                selection_section(ctx), oracle_section(ctx), synthetic_section(ctx), latency_section(ctx),
                training_section(ctx), discrepancy_section(ctx), repro,
                Section("Benchmarks", [Block("text", text=(
                    "Speed of this implementation (not a result of the paper): reports/benchmarks.md (CPU, "
                    "`snakemake --cores all bench`) and reports/benchmarks-gpu.md (CUDA, benchmarks/gpu.sh), each "
                    "with the machine and the code it measured; claim e_gpu reads reports/benchmarks-gpu.json."))]),
                provenance_section(ctx, hashed, benchmarks_dir)]
    title = study.report.title
    atomic.write_text(html, render_html(title, sections, figures_dir, html))
    atomic.write_text(md, render_markdown(title, sections, figures_dir, md))
