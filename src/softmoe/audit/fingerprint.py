"""A small fingerprint of the study's numerics (README, "Reproducibility"): the md5 of a short
training's model.safetensors and of its evaluation CSV (mnist5k, n = 4, seed 0, STEPS steps of
params.yaml's recipe), with the CPU model, code paths (softmoe.base.numerics) and torch version it
was recorded on. tests/test_fingerprint.py reruns it and compares with tests/fingerprint.json:
the same bytes are required on the recorded CPU model; on another CPU model the bytes are
compared too (identical bytes are the evidence that the pins make runs portable), and where they
differ the accuracies must agree within TOLERANCE, with a warning naming both CPUs.

Re-record (after a deliberate change of the numerics, the recipe or torch):
    python -m softmoe.audit.fingerprint --out tests/fingerprint.json

Pins the code paths before torch loads, like every compute step; nothing here imports torch at
module level."""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from softmoe.base import atomic, numerics

DATASET, N, SEED, STEPS = "mnist5k", 4, 0, 300
TOLERANCE = 0.01          # accuracies of the fresh run within this of the recorded ones


def recipe(params: dict) -> dict:
    """params.yaml's mapping, shortened to the fingerprint's training (STEPS steps, one thread)."""
    p = json.loads(json.dumps(params))
    p["dataset"], p["train"]["max_steps"], p["threads"] = DATASET, STEPS, 1
    return p


def digest(params: dict) -> str:
    """sha256 of what the fingerprint depends on in params (dataset entry, model, train, evaluate)."""
    keys = {"datasets": params["datasets"][DATASET], "model": params["model"], "train": params["train"],
            "evaluate": params["evaluate"]}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()


def run(params: dict, work: Path, data_dir: Path | None = None) -> dict:
    """Prepare mnist5k (unless `data_dir` holds it), train n = N seed SEED for STEPS steps and
    evaluate it under `work`; returns the fingerprint (md5, accuracies, where it ran)."""
    import torch

    from softmoe.data import datasets
    from softmoe.steps import evaluate, train
    from softmoe.study.params import Study

    torch.set_num_threads(1)
    study = Study.of(recipe(params))
    if data_dir is None:
        data_dir = work / "data" / DATASET
        datasets.prepare(study.datasets, DATASET, data_dir)
    run_dir, csv = work / "run", work / "eval.csv"
    metrics = train.train_run(study.train, study.model, study.dataset_entry, data_dir, N, SEED, run_dir)
    evaluate.evaluate_run(study.evaluate, study.train, study.model, study.dataset_entry, data_dir, run_dir, csv)
    rows = json.loads(_rows_json(csv))
    return {"recipe": {"dataset": DATASET, "n": N, "seed": SEED, "steps": STEPS,
                       "params_sha256": digest(recipe(params))},
            "md5": {"model.safetensors": atomic.digest(run_dir / "model.safetensors", "md5"),
                    "eval.csv": atomic.digest(csv, "md5")},
            "test_accuracy": metrics["test_accuracy"], "accuracy": rows,
            "recorded_on": {**numerics.facts(), "torch": torch.__version__, "python": platform.python_version()}}


def _rows_json(csv: Path) -> str:
    """{"<method> k=<k> renorm=<r>": accuracy} of an evaluation CSV (random: mean over its seeds)."""
    import pandas as pd
    frame = pd.read_csv(csv)
    means = frame.groupby(["method", "k", "renormalize"])["accuracy"].mean()
    return json.dumps({f"{m} k={int(k)} renorm={bool(r)}": round(float(a), 6) for (m, k, r), a in means.items()})


@dataclass
class Comparison:
    same_machine: bool      # same CPU model, code paths and torch: identical bytes required
    identical: bool
    largest: float          # largest accuracy difference (test accuracy and every evaluation row)
    message: str

    @property
    def ok(self) -> bool:
        return self.identical or (not self.same_machine and self.largest <= TOLERANCE)


def compare(recorded: dict, fresh: dict) -> Comparison:
    """The fresh fingerprint against the recorded one (see the module docstring)."""
    was, now = recorded["recorded_on"], fresh["recorded_on"]
    same = all(was.get(k) == now.get(k) for k in ("cpu", "numerics", "torch"))
    identical = recorded["md5"] == fresh["md5"]
    a, b = recorded["accuracy"], fresh["accuracy"]
    diffs = [abs(recorded["test_accuracy"] - fresh["test_accuracy"])]
    diffs += [abs(a[k] - b[k]) for k in a if k in b]
    largest = max(diffs) if set(a) == set(b) else float("inf")
    sides = (f"recorded on {was.get('cpu')} [{was.get('numerics')}, torch {was.get('torch')}], "
             f"now on {now.get('cpu')} [{now.get('numerics')}, torch {now.get('torch')}]")
    differing = [k for k in recorded["md5"] if recorded["md5"][k] != fresh["md5"].get(k)]
    if identical:
        message = f"identical bytes ({', '.join(recorded['md5'])}); {sides}"
    elif same:
        message = (f"bytes differ ({', '.join(differing)}) on the same CPU model, code paths and torch: the "
                   f"numerics changed (largest accuracy difference {largest:.4f}); {sides}. If the change is "
                   "deliberate, re-record: python -m softmoe.audit.fingerprint --out tests/fingerprint.json")
    else:
        within = "within" if largest <= TOLERANCE else "BEYOND"
        message = (f"bytes differ ({', '.join(differing)}) between CPU models; accuracies {within} {TOLERANCE} "
                   f"(largest difference {largest:.4f}); {sides}")
    return Comparison(same, identical, largest, message)


def read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: no readable fingerprint ({err}); record one: "
                         "python -m softmoe.audit.fingerprint --out tests/fingerprint.json") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m softmoe.audit.fingerprint", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--out", default="tests/fingerprint.json", help="where to record it")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of recording")
    args = parser.parse_args(argv)
    numerics.pin()                      # before torch loads, like every compute step
    from softmoe.study.params import load
    params = load(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = run(params, Path(tmp))
    if args.check:
        result = compare(read(Path(args.out)), fresh)
        print(("ok: " if result.ok else "FAILED: ") + result.message)
        return 0 if result.ok else 1
    atomic.write_json(Path(args.out), fresh)
    print(f"{args.out}: {fresh['md5']} on {fresh['recorded_on']['cpu']} [{fresh['recorded_on']['numerics']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
