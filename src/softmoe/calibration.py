"""Steps or epochs? (docs/study.md §7): a model of the grid trained for the paper's epochs
instead of its optimizer steps, then evaluated like the grid, so that the report can show what
matching steps changes on a small training set."""
from __future__ import annotations

import copy
from pathlib import Path

from softmoe import evaluate, tables, train


def paper_epochs_recipe(params: dict) -> dict:
    """params with train.max_steps off and train.epochs = calibration.epochs."""
    recipe = copy.deepcopy(params)
    recipe["train"].update(max_steps=None, epochs=params["calibration"]["epochs"])
    return recipe


def calibrate(params: dict, data_dir: Path, n: int, seed: int, out: Path) -> None:
    """Train (or resume) the n-expert model for calibration.epochs epochs into `out` and write
    out/selection.csv: its selection rows with the epochs and steps it trained."""
    recipe = paper_epochs_recipe(params)
    metrics = train.train_run(recipe, data_dir, n, seed, Path(out))
    if not metrics:          # a non-zero rank of a multi-process run
        return
    frame = evaluate.selection_rows(recipe, data_dir, Path(out))
    frame["epochs"], frame["steps"] = metrics["epochs"], metrics["steps"]
    tables.write(Path(out) / "selection.csv", frame, "calibration")
