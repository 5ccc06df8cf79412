"""Hypotheses tested by runs (docs/hypotheses.md): the selection rows of the models trained anew
for the hypotheses of params.yaml (softmoe hypothesis), as the hypotheses table. Their comparison
with the grid, the calibration and the paper is softmoe.audit.hypotheses (metrics/hypotheses.json)."""
from __future__ import annotations

from softmoe.study import layout
from softmoe.experiments.e3_selection import SELECTION_COLUMNS
from softmoe.experiments.unit import Experiment, Schema, Table

EXTRA = ("epochs", "steps", "train_images", "full_train_images")
HYPOTHESES_COLUMNS = Schema(("name",) + SELECTION_COLUMNS.columns + EXTRA, SELECTION_COLUMNS.numeric + EXTRA,
                            ("name",) + SELECTION_COLUMNS.required)

HYPOTHESES = Table("hypotheses", HYPOTHESES_COLUMNS, step="hypothesis",
                   source=layout.HYPOTHESIS + "/selection.csv", runs=layout.hypothesis_runs)
EXPERIMENT = Experiment(
    key="hypotheses", title="Hypotheses tested by runs", paper="the discrepancies with the paper",
    tables=(HYPOTHESES,),
)
