"""The audit-ready report: a reproducibility summary with the verdict box first
(summary.py), the setting, the claims (rendered from metrics/claims.json, judged by the
claims step), every figure with its numbers beside the paper's and their intervals, the
differences to the paper, a reproduction check against the committed metrics, and the provenance
of this run with the md5 of every file it describes, computed when the report is written. Layout
only: the judging is softmoe.audit.claims', the drawing figures.py's, the rendering render.py's. This module
holds the setting, claims and scope sections and the order of the sections; experiments.py
the section of each experiment, audit.py the discrepancies, reproduction check and
provenance."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from softmoe.base import atomic
from softmoe.provenance import record
from softmoe.study import paper
from softmoe.workflow import tables
from softmoe.base.errors import UserError
from softmoe.study.params import Study
from softmoe.experiments.e1_theorem import SYNTHETIC_LOSS
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.e4_latency import LATENCY
from softmoe.experiments.training import TRAINING
from softmoe.report.render import Block, Section, render_html, render_markdown
from softmoe.report.audit import discrepancy_section, provenance_section, reproduction
from softmoe.report.context import Context, trace, unshown_sections
from softmoe.report.experiments import (latency_section, oracle_section, selection_section, synthetic_section,
                                        training_section)
from softmoe.report.summary import (caveat, ordered, scale_facts, scale_warnings,  # noqa: F401 (scale_warnings: API)
                                    summary_section, test_text)


# ---- the claims ------------------------------------------------------------------------------------
def claims_section(ctx: Context) -> Section:
    rows = []
    for key, cl in ordered(ctx.claims):
        tests = cl.get("tests")
        if tests is None:       # a claims.json from before the tested verdicts
            judged, margin = ", ".join(f"{k} {v}" for k, v in cl.get("scope", {}).items()), \
                f"{cl.get('tolerance', '–')} ({cl.get('why', '–')})"
        else:
            scale = cl.get("scale") or {}
            judged = (scale_facts(scale) or "–") + (f"; {scale['note']}" if scale.get("note") else "")
            margin = cl.get("margin_reason") or "–"
        letter = cl.get("paper_claim")
        rows.append({"": key, "paper's claim": f"({letter})" if letter else "ours" if "paper_claim" in cl else "–",
                     "claim": cl["statement"], "judged on": judged, "ours": cl.get("ours", "–"),
                     "paper": cl.get("paper", "–"),
                     "tests: effect (simultaneous 95 % interval over the claim's tests; claimed side)": "; ".join(test_text(t) for t in tests or []) or "–",
                     "margin (why)": margin, "verdict": cl["verdict"], "evidence": cl.get("evidence", "")})
    correction = next((cl.get("correction") for _, cl in ordered(ctx.claims) if cl.get("correction")), None)
    return Section("Claims", [
        Block("text", text=("Judged by the claims step on this run's tables (metrics/claims.json, a DVC "
                            "metric: `dvc metrics diff` shows a verdict that changed)."
                            + (f" Intervals are simultaneous over each claim's tests ({correction})." if correction
                               else ""))),
        Block("table", frame=pd.DataFrame(rows)),
        trace(ctx, [SELECTION.name, TRAINING.name, SYNTHETIC_LOSS.name, LATENCY.name], ("claims",),
              [("claims", ctx.claims_path)])])


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
    p, ds, train = ctx.study, ctx.study.dataset, ctx.frames[TRAINING.name]
    ref = paper.REFERENCE.get(ds)
    ps = paper.SETTING.get(ref, {})
    entry = p.dataset_entry
    syn, wide = p.synthetic, p.latency.wide
    steps = sorted({int(s) for s in train["steps"].dropna()})
    epochs = sorted({int(e) for e in train["epochs"].dropna()})
    images = ctx.frames[SELECTION.name]["images"].dropna()
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
    if caveat(ctx):
        blocks.insert(0, Block("warn", text=caveat(ctx)))
    return Section("Setting", blocks)


# ---- entry point -----------------------------------------------------------------------------------
def _check_dataset(dataset: str, frames: dict, tables_dir: Path) -> None:
    for name in (SELECTION.name, TRAINING.name):
        found = sorted(set(frames[name]["dataset"].astype(str)))
        if found != [dataset]:
            raise UserError(f"{tables.path(tables_dir, name)}: holds dataset(s) {found}, but params 'dataset' is "
                            f"{dataset!r}; pass the matching --tables folder")


def build_report(study: Study, params_path: Path, tables_dir: Path, figures_dir: Path, claims_json: Path,
                 benchmarks_dir: Path, hashed: list[Path], html: Path, md: Path) -> None:
    """Write the HTML and Markdown report from the tables, figures, claims and benchmark files."""
    ctx = Context(study, params_path, tables_dir, figures_dir, claims_json)
    _check_dataset(study.dataset, ctx.frames, tables_dir)
    root = Path(record.git_state(Path(params_path).resolve().parent)["root"])
    repro_verdict, repro = reproduction(ctx, root)
    sections = [summary_section(ctx, repro_verdict, benchmarks_dir), setting_section(ctx), claims_section(ctx),
                scope_section(ctx),
                selection_section(ctx), oracle_section(ctx), synthetic_section(ctx), latency_section(ctx),
                training_section(ctx)]
    sections += unshown_sections(ctx)       # an experiment without a section of its own yet
    sections += [discrepancy_section(ctx), repro,
                 Section("Benchmarks", [Block("text", text=(
                     "Speed of this implementation (not a result of the paper): reports/benchmarks.md (CPU, "
                     "`snakemake --cores all bench`) and reports/benchmarks-gpu.md (CUDA, benchmarks/gpu.sh), each "
                     "with the machine and the code it measured; claim c2_gpu reads reports/benchmarks-gpu.json."))]),
                 provenance_section(ctx, hashed, benchmarks_dir)]
    title = study.report.title
    atomic.write_text(html, render_html(title, sections, figures_dir, html))
    atomic.write_text(md, render_markdown(title, sections, figures_dir, md))
