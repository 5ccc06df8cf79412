"""Where every step's outputs live: the one path layout that Snakemake, DVC and the CLI share.

The templates use Snakemake's wildcard syntax, so the Snakefile uses them as rule patterns,
dvc.yaml spells the same paths with ${...}, and a test checks that both engines agree."""
from __future__ import annotations

from pathlib import Path

DATA = "data/{dataset}"
TRAIN = "results/train/{dataset}/n{n}-s{seed}"
SYNTHETIC = "results/synthetic/v{variance}/{tokens}/n{n}"
PROOF = "results/synthetic/v{variance}/{tokens}/proof.csv"
EVAL = "results/eval/{dataset}/n{n}-s{seed}.csv"
CALIBRATION = "results/calibration/{dataset}/n{n}-s{seed}"
TABLES = "results/tables/{dataset}"
METRICS = "metrics/{dataset}.json"
CLAIMS = "metrics/claims.json"
DISCREPANCIES = TABLES + "/discrepancies.csv"
GPU_BENCHMARKS = "reports/benchmarks-gpu.json"   # written on a GPU machine (benchmarks/gpu.sh)
FIGURES = "reports/figures"
BENCHMARKS = "results/benchmarks"

# Each tidy table of results/tables/<dataset>/ and the per-run files it concatenates.
TABLE_SOURCES = {
    "training": TRAIN + "/metrics.json",
    "curves": TRAIN + "/curves.csv",
    "selection": EVAL,
    "synthetic_loss": SYNTHETIC + "/loss.csv",
    "synthetic_proof": PROOF,
    "calibration": CALIBRATION + "/selection.csv",
}


def runs(params: dict) -> list[dict]:
    """The (dataset, n, seed) of every model of the expert grid."""
    return [{"dataset": params["dataset"], "n": n, "seed": s}
            for n in params["experts"] for s in params["seeds"]]


def synthetic_runs(params: dict) -> list[dict]:
    """The (variance, tokens, n) of every synthetic run; the variance as params.yaml spells it."""
    syn = params["synthetic"]
    return [{"variance": v, "tokens": t, "n": n} for v in syn["variances"]
            for t in syn["tokenizations"] for n in syn["experts"]]


def calibration_runs(params: dict) -> list[dict]:
    """The (dataset, n, seed) trained for the paper's epochs."""
    return [{"dataset": params["dataset"], "n": n, "seed": params["calibration"]["seed"]}
            for n in params["calibration"]["experts"]]


def train_dirs(params: dict, first_seed_only: bool = False) -> list[Path]:
    """The run folders of the grid (of its first training seed only, e.g. for timing)."""
    return [Path(TRAIN.format(**r)) for r in runs(params)
            if not first_seed_only or r["seed"] == params["seeds"][0]]


def table_inputs(params: dict, table: str) -> list[Path]:
    """The files one table is made of, with the wildcards each one filled in (added as columns)."""
    pattern = TABLE_SOURCES[table]
    if table == "synthetic_loss":
        keys = synthetic_runs(params)
    elif table == "synthetic_proof":
        keys = [{k: r[k] for k in ("variance", "tokens")} for r in synthetic_runs(params) if r["n"] == 1]
    elif table == "calibration":
        keys = calibration_runs(params)
    else:
        keys = runs(params)
    return [(Path(pattern.format(**k)), k) for k in keys]
