"""Steps or epochs? (docs/study.md §7): grid models trained for the paper's epochs instead of
its optimizer steps and evaluated like the grid (softmoe calibrate): the calibration table."""
from __future__ import annotations

from softmoe.study import layout
from softmoe.experiments.e3_selection import SELECTION_COLUMNS
from softmoe.experiments.unit import Experiment, Schema, Table

CALIBRATION_COLUMNS = Schema(SELECTION_COLUMNS.columns + ("epochs", "steps"),
                             SELECTION_COLUMNS.numeric + ("epochs", "steps"), SELECTION_COLUMNS.required)

CALIBRATION = Table("calibration", CALIBRATION_COLUMNS, step="calibrate",
                    source=layout.CALIBRATION + "/selection.csv",
                    runs=lambda study: layout.calibration_runs(study.dataset, study.calibration))
EXPERIMENT = Experiment(
    key="calibration", title="Steps vs epochs", paper="the MNIST recipe (15 epochs)",
    tables=(CALIBRATION,),
)
