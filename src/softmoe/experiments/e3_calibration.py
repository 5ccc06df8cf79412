"""Steps or epochs? (docs/study.md §7): grid models trained for the paper's epochs instead of
its optimizer steps and evaluated like the grid (softmoe calibrate): the calibration table."""
from __future__ import annotations

from softmoe.study import layout
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.unit import Experiment, Schema, Table

CALIBRATION = Schema(SELECTION.columns + ("epochs", "steps"), SELECTION.numeric + ("epochs", "steps"),
                     SELECTION.required)

EXPERIMENT = Experiment(
    key="calibration", title="Steps vs epochs", paper="the MNIST recipe (15 epochs)",
    tables=(Table("calibration", CALIBRATION, step="calibrate", source=layout.CALIBRATION + "/selection.csv",
                  runs=lambda study: layout.calibration_runs(study.dataset, study.calibration)),),
)
