"""What each step depends on besides its input files: params keys and source modules.

Snakemake rules put these into `params:` (a change reruns the rule) and `input:`; dvc.yaml lists
the same keys under `params:` and the same files under `deps:`. tests/test_workflow.py checks
that the two engines agree with this table."""
from __future__ import annotations

import json

_MATH = ["src/softmoe/layer.py", "src/softmoe/models.py", "src/softmoe/selection.py"]
_MODELFILE = "src/softmoe/modelfile.py"

# step -> (params keys, with {dataset} filled from params.yaml; source files)
STEPS = {
    "prepare": (["datasets.{dataset}"], ["src/softmoe/data.py"]),
    "train": (["model", "train"], ["src/softmoe/train.py", "src/softmoe/data.py", _MODELFILE, *_MATH]),
    "synthetic": (["synthetic.variance", "synthetic.batch_size", "synthetic.steps", "synthetic.lr",
                   "synthetic.seed"], ["src/softmoe/synthetic.py", _MODELFILE, *_MATH]),
    "proof": (["synthetic.proof_scales"], ["src/softmoe/synthetic.py"]),
    "evaluate": (["evaluate"], ["src/softmoe/evaluate.py", *_MATH]),
    "tabulate": ([], ["src/softmoe/tables.py"]),
    "summarize": ([], ["src/softmoe/evaluate.py"]),
    "latency": (["latency"], ["src/softmoe/latency.py", *_MATH]),
    "figures": ([], ["src/softmoe/figures.py", "src/softmoe/paper.py"]),
    "report": (["report"], ["src/softmoe/report.py", "src/softmoe/figures.py", "src/softmoe/paper.py",
                            "src/softmoe/templates/report.html.j2"]),
}


def param_keys(step: str, params: dict) -> list[str]:
    return [k.format(dataset=params["dataset"]) for k in STEPS[step][0]]


def code(step: str) -> list[str]:
    return STEPS[step][1]


def param_values(step: str, params: dict) -> str:
    """The values of a step's params keys, as one stable string (Snakemake's rerun trigger)."""
    values = {}
    for key in param_keys(step, params):
        node = params
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return json.dumps(values, sort_keys=True)
