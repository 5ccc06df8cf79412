"""What each step depends on besides its input files: params keys and source files.

Snakemake rules put these into `params:` (a change reruns the rule) and `input:`; dvc.yaml lists
the same keys under `params:` and the same files under `deps:`. The params keys are listed here;
the source files are derived from the imports of the step's code (softmoe.deps), never listed.
tests/test_workflow.py checks that the two engines agree with this module; tests/test_deps.py
that dvc.yaml lists exactly the derived source files (`python -m softmoe.deps --check dvc.yaml`)."""
from __future__ import annotations

import json

from softmoe import deps

# step -> params keys it reads, with {dataset} filled from params.yaml
STEPS = {
    "prepare": ["datasets.{dataset}"],
    "train": ["model", "train"],
    "synthetic": ["synthetic.batch_size", "synthetic.steps", "synthetic.lr", "synthetic.seed"],
    "proof": ["synthetic.proof_scales"],
    "evaluate": ["evaluate"],
    "calibrate": ["model", "train", "evaluate", "calibration.epochs"],
    "tabulate": [],
    "summarize": [],
    "latency": ["latency"],
    "claims": [],
    "figures": [],
    "report": ["report"],
}


def param_keys(step: str, params: dict) -> list[str]:
    """The dotted params keys a step reads, {dataset} filled in. params here is the raw mapping
    (Snakemake's config, dvc.yaml's keys), not softmoe.params.Study: these name the file's keys."""
    return [k.format(dataset=params["dataset"]) for k in STEPS[step]]


def code(step: str) -> list[str]:
    """The source files `softmoe <step>` runs (src/softmoe/..., sorted), from its imports."""
    return deps.step_deps(step)


def param_values(step: str, params: dict) -> str:
    """The values of a step's params keys, as one stable string (Snakemake's rerun trigger)."""
    values = {}
    for key in param_keys(step, params):
        node = params
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return json.dumps(values, sort_keys=True)
