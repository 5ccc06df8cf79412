"""Steps or epochs? (docs/study.md §7): a model of the grid trained for the paper's epochs
instead of its optimizer steps, then evaluated like the grid, so that the report can show what
matching steps changes on a small training set."""
from __future__ import annotations

from pathlib import Path

from softmoe.base import atomic
from softmoe.steps import evaluate, train
from softmoe.study.params import Calibration, Study, Train


def paper_epochs_recipe(recipe: Train, calibration: Calibration) -> Train:
    """params.train with max_steps off and epochs = calibration.epochs."""
    return recipe.replaced(max_steps=None, epochs=calibration.epochs)


def calibrate(study: Study, data_dir: Path, n: int, seed: int, out: Path) -> None:
    """Train (or resume) the n-expert model for calibration.epochs epochs into `out` and write
    out/selection.csv: its selection rows with the epochs and steps it trained. Reads the
    study's calibration, train, model, evaluate and dataset entry."""
    recipe = paper_epochs_recipe(study.train, study.calibration)
    metrics = train.train_run(recipe, study.model, study.dataset_entry, data_dir, n, seed, Path(out))
    if not metrics:          # a non-zero rank of a multi-process run
        return
    frame = evaluate.selection_rows(study.evaluate, recipe, study.model, study.dataset_entry,
                                    data_dir, Path(out))
    frame["epochs"], frame["steps"] = metrics["epochs"], metrics["steps"]
    atomic.write_csv(Path(out) / "selection.csv", frame)
