"""The figures step: every figure of every experiment (softmoe.experiments), drawn from the tidy
tables of results/tables/<dataset>/ only (read through softmoe.workflow.tables) with the drawing kit of
softmoe.experiments.plots; the analyses are softmoe.study.stats's and softmoe.statistics.discrepancies'.

Each figure is written as <stem>.png and <stem>.svg under the output folder, always under the
same names: a figure whose table is missing or empty is drawn as a panel that says "not run"
and why, so the workflow's outputs stay fixed."""
from __future__ import annotations

from pathlib import Path

import matplotlib

from softmoe import experiments
from softmoe.experiments import plots
from softmoe.workflow import tables
from softmoe.experiments.unit import Evidence
from softmoe.study.params import Study


def make_figures(study: Study, tables_dir: Path, out_dir: Path) -> None:
    """Draw every figure of every experiment from the tables of a run of `study` into out_dir
    (PNG and SVG)."""
    evidence = Evidence(study, tables.read_all(Path(tables_dir)))
    with matplotlib.rc_context(plots.style()):
        for stem, spec in experiments.figures().items():
            fig = spec.draw(evidence)
            if isinstance(fig, str):
                fig = plots.not_run(spec.title, fig)
            plots.save(fig, Path(out_dir), stem)
