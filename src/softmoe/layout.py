"""Where every step's outputs live: the one path layout that Snakemake, DVC and the CLI share.

The templates use Snakemake's wildcard syntax, so the Snakefile uses them as rule patterns,
dvc.yaml spells the same paths with ${...}, and a test checks that both engines agree."""
from __future__ import annotations

from pathlib import Path

DATA = "data/{dataset}"
TRAIN = "results/train/{dataset}/n{n}-s{seed}"
SYNTHETIC = "results/synthetic/{tokens}/n{n}"
PROOF = "results/synthetic/{tokens}/proof.csv"
EVAL = "results/eval/{dataset}/n{n}-s{seed}.csv"
TABLES = "results/tables/{dataset}"
METRICS = "metrics/{dataset}.json"
FIGURES = "reports/figures"
BENCHMARKS = "results/benchmarks"

# Each tidy table of results/tables/<dataset>/ and the per-run files it concatenates.
TABLE_SOURCES = {
    "training": TRAIN + "/metrics.json",
    "curves": TRAIN + "/curves.csv",
    "selection": EVAL,
    "synthetic_loss": SYNTHETIC + "/loss.csv",
    "synthetic_proof": PROOF,
}


def runs(params: dict) -> list[dict]:
    """The (dataset, n, seed) of every model of the expert grid."""
    return [{"dataset": params["dataset"], "n": n, "seed": s}
            for n in params["experts"] for s in params["seeds"]]


def synthetic_runs(params: dict) -> list[dict]:
    syn = params["synthetic"]
    return [{"tokens": t, "n": n} for t in syn["tokenizations"] for n in syn["experts"]]


def train_dirs(params: dict) -> list[Path]:
    return [Path(TRAIN.format(**r)) for r in runs(params)]


def table_inputs(params: dict, table: str) -> list[Path]:
    """The files one table is made of, with the wildcards each one filled in (added as columns)."""
    pattern = TABLE_SOURCES[table]
    if table.startswith("synthetic"):
        keys = synthetic_runs(params)
        if table == "synthetic_proof":
            keys = [{"tokens": t} for t in params["synthetic"]["tokenizations"]]
    else:
        keys = runs(params)
    return [(Path(pattern.format(**k)), k) for k in keys]
