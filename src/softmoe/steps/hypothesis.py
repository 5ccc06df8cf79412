"""One run of a hypothesis (docs/hypotheses.md): a model of the grid trained anew with the
hypothesis's overrides of `train`, `evaluate` and the data order (params.yaml `hypotheses`),
then evaluated like the grid, so that `softmoe hypotheses` can pair it with the grid's model of
the same (n, seed). Run folder: the train step's files plus selection.csv (the selection rows
with the hypothesis name, the epochs and steps trained and the training images used)."""
from __future__ import annotations

from pathlib import Path

from softmoe.base import atomic
from softmoe.steps import evaluate, train
from softmoe.data.datasets import read_manifest
from softmoe.base.errors import UserError
from softmoe.study.params import Hypothesis, Study


def hypothesis_of(study: Study, name: str, n: int, seed: int) -> Hypothesis:
    """The trained hypothesis `name` of the study, refused unless (n, seed) is one of its runs."""
    h = study.hypotheses.get(name)
    if h is None:
        raise UserError(f"--name {name}: no such entry under 'hypotheses' in the params file; "
                        f"defined: {sorted(study.hypotheses) or 'none'}")
    if h.runs_from != "train":
        raise UserError(f"--name {name}: runs_from is {h.runs_from!r}, nothing to train; "
                        "`softmoe hypotheses` reads its rows from the grid or the calibration")
    if n not in h.experts or seed not in h.seeds or study.dataset not in h.datasets:
        raise UserError(f"--experts {n} --seed {seed}: not a run of hypothesis {name} on {study.dataset} "
                        f"(experts {list(h.experts)}, seeds {list(h.seeds)}, datasets {list(h.datasets)})")
    return h


def run(study: Study, name: str, data_dir: Path, n: int, seed: int, out: Path) -> None:
    """Train (or resume) the n-expert model of hypothesis `name` into `out` and write
    out/selection.csv; reads the study's model, train, evaluate and dataset entry."""
    h = hypothesis_of(study, name, n, seed)
    recipe, cfg = study.train.replaced(**h.train), study.evaluate.replaced(**h.evaluate)
    out = Path(out)
    metrics = train.train_run(recipe, study.model, study.dataset_entry, data_dir, n, seed, out,
                              order=dict(h.data) or None)
    if not metrics:          # a non-zero rank of a multi-process run
        return
    frame = evaluate.selection_rows(cfg, recipe, study.model, study.dataset_entry, data_dir, out)
    full = read_manifest(data_dir, study.dataset_entry)["splits"]["train"]["size"]
    frame.insert(0, "name", name)
    frame["epochs"], frame["steps"] = metrics["epochs"], metrics["steps"]
    frame["train_images"], frame["full_train_images"] = h.data.get("train_subset", full), full
    atomic.write_csv(out / "selection.csv", frame)
