"""Where every step's outputs live: the one path layout that Snakemake, DVC and the CLI share.

Which table collects which per-run files is declared by each experiment (softmoe.experiments).
The templates use Snakemake's wildcard syntax, so the Snakefile uses them as rule patterns,
dvc.yaml spells the same paths with ${...}, and a test checks that both engines agree. The grid
functions read a softmoe.study.params.Study (or its sections) by attribute: layout imports nothing of
the package."""
from __future__ import annotations

from pathlib import Path

DATA = "data/{dataset}"
TRAIN = "results/train/{dataset}/n{n}-s{seed}"
SYNTHETIC = "results/synthetic/v{variance}/{tokens}/n{n}-s{seed}"
PROOF = "results/synthetic/v{variance}/{tokens}/proof.csv"
EVAL = "results/eval/{dataset}/n{n}-s{seed}.csv"
CALIBRATION = "results/calibration/{dataset}/n{n}-s{seed}"
HYPOTHESIS = "results/hypotheses/{dataset}/{name}/n{n}-s{seed}"    # one trained run of a hypothesis
HYPOTHESES = "metrics/hypotheses.json"
CRATE = "ro-crate-metadata.json"   # the run as a Workflow Run RO-Crate, at the crate's root: the repository
TABLES = "results/tables/{dataset}"
METRICS = "metrics/{dataset}.json"
MACHINE = "metrics/{dataset}-machine.json"   # where the grid was trained (not science)
CLAIMS = "metrics/claims.json"
DISCREPANCIES = TABLES + "/discrepancies.csv"
GPU_BENCHMARKS = "reports/benchmarks-gpu.json"   # written on a GPU machine (benchmarks/gpu.sh)
FIGURES = "reports/figures"
BENCHMARKS = "results/benchmarks"
WIDE = "wide"   # the config name of params.latency.wide (the paper's table 3 layer) in latency tables


def runs(study) -> list[dict]:
    """The (dataset, n, seed) of every model of the expert grid."""
    return [{"dataset": study.dataset, "n": n, "seed": s} for n in study.experts for s in study.seeds]


def synthetic_runs(synthetic) -> list[dict]:
    """The (variance, tokens, n, seed) of every synthetic run; the variance as params.yaml spells it."""
    return [{"variance": v, "tokens": t, "n": n, "seed": s} for v in synthetic.variances
            for t in synthetic.tokenizations for n in synthetic.experts for s in synthetic.seeds]


def proof_run(synthetic) -> str:
    """The run folder template (variance, tokens left) of the model the proof check reads: the
    n = 1 run of the first synthetic seed (docs/study.md §5 E1)."""
    return SYNTHETIC.replace("{n}", "1").replace("{seed}", str(synthetic.seeds[0]))


def calibration_runs(dataset: str, calibration) -> list[dict]:
    """The (dataset, n, seed) trained for the paper's epochs."""
    return [{"dataset": dataset, "n": n, "seed": calibration.seed} for n in calibration.experts]


def train_dirs(study, first_seed_only: bool = False) -> list[Path]:
    """The run folders of the grid (of its first training seed only, e.g. for timing)."""
    return [Path(TRAIN.format(**r)) for r in runs(study)
            if not first_seed_only or r["seed"] == study.seeds[0]]


def hypothesis_runs(study) -> list[dict]:
    """The (dataset, name, n, seed) of every run trained for a hypothesis (`runs_from: train`)
    that applies to the study's dataset: its experts x seeds (docs/hypotheses.md)."""
    return [{"dataset": study.dataset, "name": h.name, "n": n, "seed": s}
            for h in study.hypotheses.values() if h.runs_from == "train" and study.dataset in h.datasets
            for n in h.experts for s in h.seeds]
