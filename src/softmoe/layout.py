"""Where every step's outputs live: the one path layout that Snakemake, DVC and the CLI share.

The templates use Snakemake's wildcard syntax, so the Snakefile uses them as rule patterns,
dvc.yaml spells the same paths with ${...}, and a test checks that both engines agree. The grid
functions read a softmoe.params.Study (or its sections) by attribute: layout imports nothing of
the package."""
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


def runs(study) -> list[dict]:
    """The (dataset, n, seed) of every model of the expert grid."""
    return [{"dataset": study.dataset, "n": n, "seed": s} for n in study.experts for s in study.seeds]


def synthetic_runs(synthetic) -> list[dict]:
    """The (variance, tokens, n) of every synthetic run; the variance as params.yaml spells it."""
    return [{"variance": v, "tokens": t, "n": n} for v in synthetic.variances
            for t in synthetic.tokenizations for n in synthetic.experts]


def calibration_runs(dataset: str, calibration) -> list[dict]:
    """The (dataset, n, seed) trained for the paper's epochs."""
    return [{"dataset": dataset, "n": n, "seed": calibration.seed} for n in calibration.experts]


def train_dirs(study, first_seed_only: bool = False) -> list[Path]:
    """The run folders of the grid (of its first training seed only, e.g. for timing)."""
    return [Path(TRAIN.format(**r)) for r in runs(study)
            if not first_seed_only or r["seed"] == study.seeds[0]]


def table_inputs(study, table: str) -> list[tuple[Path, dict]]:
    """The files one table is made of, with the wildcards each one filled in (added as columns)."""
    pattern = TABLE_SOURCES[table]
    if table == "synthetic_loss":
        keys = synthetic_runs(study.synthetic)
    elif table == "synthetic_proof":
        keys = [{k: r[k] for k in ("variance", "tokens")} for r in synthetic_runs(study.synthetic) if r["n"] == 1]
    elif table == "calibration":
        keys = calibration_runs(study.dataset, study.calibration)
    else:
        keys = runs(study)
    return [(Path(pattern.format(**k)), k) for k in keys]
