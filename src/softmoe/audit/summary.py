"""The study's headline metrics, metrics/<dataset>.json for `dvc metrics show` / `dvc metrics
diff`: per n, all experts, Algorithm 1 / random / z at k = n/2, n/4, n/8 without
renormalization (seed means with their 95 % intervals) and the oracle: science only, the same
bytes on every host of the same code paths. The machines the models were trained on (CPU models,
code paths, devices, threads, training time) go to metrics/<dataset>-machine.json beside it, so
that the reproduction check names both sides' CPUs (softmoe.report.audit)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from softmoe.base import atomic
from softmoe.study import stats
from softmoe.workflow import tables
from softmoe.base.errors import UserError
from softmoe.provenance.record import machine
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.training import TRAINING, TRAINING_TIME

HEADLINE_DIVISORS = (2, 4, 8)   # k = n/2, n/4, n/8


def summarize(dataset: str, tables_dir: Path, out_json: Path, machine_json: Path) -> None:
    """metrics/<ds>.json for `dvc metrics show`: per n, all experts, Algorithm 1 / random / z at
    k = n/2, n/4, n/8 without renormalization, and the oracle (means over training seeds); and
    metrics/<ds>-machine.json (`machines`)."""
    selection = tables.read(tables_dir, SELECTION.name)
    training = tables.read(tables_dir, TRAINING.name)
    selection = selection[selection["dataset"] == dataset]
    if selection.empty:
        raise UserError(f"{tables_dir / 'selection.csv'}: no rows for dataset {dataset!r}; "
                        "run the evaluate and tabulate steps for it first")
    plain = selection[~selection["renormalize"].astype(bool)]
    ci = stats.mean_over_seeds(plain).set_index(["n", "method", "k"])["ci"]
    per_n = {}
    for n, rows in plain.groupby("n"):
        entry = {"seeds": int(rows["seed"].nunique()),
                 "all": _mean(rows, "all", n, "accuracy"), "all_ci95": _rounded(ci.get((n, "all", n)))}
        params_total = training.loc[training["n"] == n, "params_total"]
        if len(params_total):
            entry["params_total"] = int(params_total.iloc[0])
        for d in HEADLINE_DIVISORS:
            k = stats.k_at(n, 1 / d)
            if k is not None and (alg1 := _mean(rows, "alg1", k, "accuracy")) is not None:
                entry[f"k_n{d}"] = {"alg1": alg1, "alg1_ci95": _rounded(ci.get((n, "alg1", k))),
                                    "random": _mean(rows, "random", k, "accuracy"),
                                    "random_std": _mean(rows, "random", k, "std"),
                                    "z": _mean(rows, "alg1", k, "z")}
        oracle = rows[rows["method"] == "oracle"]
        if len(oracle):
            entry["oracle"] = {"k": int(oracle["k"].iloc[0]), "accuracy": round(oracle["accuracy"].mean(), 5),
                               "distinct_subsets": float(oracle["count"].mean())}
        per_n[f"n{n}"] = entry
    atomic.write_json(out_json, {"dataset": dataset, "experts": per_n})
    atomic.write_json(machine_json, machines(dataset, tables.read(tables_dir, TRAINING_TIME.name)))


def machines(dataset: str, timing: pd.DataFrame | None) -> dict:
    """Where the grid was trained, from the training_time table (the trainings' timing.json):
    the distinct CPU models, code paths, devices and threads, the runs and their summed wall time;
    and the machine this summary was written on."""
    trained = {"runs": 0, "cpu": [], "numerics": [], "device": [], "threads": [], "wall_time_s": None}
    if timing is not None and len(timing):
        trained = {"runs": len(timing), **{c: sorted({str(v) for v in timing[c].dropna()})
                                           for c in ("cpu", "numerics", "device", "threads")},
                   "wall_time_s": round(float(timing["wall_time_s"].sum()), 1)}
    return {"dataset": dataset, "trained_on": trained, "summarized_on": machine()}


def _rounded(value) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 5)


def _mean(rows: pd.DataFrame, method: str, k: int, column: str) -> float | None:
    """Mean of `column` over the training seeds for one (method, k), to 5 decimals; None when
    absent or not finite (an infinite z), since JSON has no infinity."""
    values = rows.loc[(rows["method"] == method) & (rows["k"] == k), column].astype(float)
    if values.empty or values.isna().all():
        return None
    mean = float(values.mean())
    return round(mean, 5) if math.isfinite(mean) else None
