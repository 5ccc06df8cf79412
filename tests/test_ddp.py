"""DDP: two CPU processes (gloo) train the same model as one process with the same global batch.

params.train.batch_size is the global batch; with devices=2 each process loads half of every
global batch (datamodule.ImageDataModule), DDP averages the gradients, so the optimization is the
same up to float summation order. Lightning's `ddp` strategy re-launches the command line in
a second process, hence a subprocess of the `softmoe train` CLI (e2e)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from softmoe.data import datasets
from softmoe.steps import train
from softmoe.study.params import Study

ROOT = Path(__file__).resolve().parents[1]
SOFTMOE = Path(sys.executable).with_name("softmoe")


@pytest.mark.e2e
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(max_steps=24, batch_size=256, accelerator="cpu")
    prepared = tmp_path / "mnist5k"
    datasets.prepare(Study.of(params).datasets, "mnist5k", prepared)
    ddp = {**params, "train": {**params["train"], "devices": 2, "strategy": "ddp"}}
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(ddp))
    command = [str(SOFTMOE if SOFTMOE.exists() else shutil.which("softmoe")), "train",
               "--params", str(tmp_path / "ddp.yaml"), "--data", str(prepared), "--experts", "8",
               "--seed", "0", "--out", str(tmp_path / "ddp"), "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MEMBER: 2/2" in done.stderr                      # really two processes

    study = Study.of(params)
    single = train.train_run(study.train, study.model, study.dataset_entry, prepared, 8, 0,
                             tmp_path / "single")                               # conftest: 1 thread
    both = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert both["steps"] == single["steps"] == 24 and both["epochs"] == single["epochs"] == 2
    assert abs(both["test_accuracy"] - single["test_accuracy"]) <= 0.002
    assert both["test_loss"] == pytest.approx(single["test_loss"], rel=1e-4)
    assert both["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)   # all ranks' batches
    curves = [pd.read_csv(tmp_path / run / "curves.csv") for run in ("ddp", "single")]
    assert curves[0]["step"].tolist() == curves[1]["step"].tolist() == [16, 24]
    weights = [load_file(str(tmp_path / run / "model.safetensors")) for run in ("ddp", "single")]
    # Adam moves a weight by about lr per step whatever its gradient's size, so the ~1e-7
    # summation-order differences of an all-reduce can flip the sign of a near-zero gradient
    # and shift a few weights by up to lr x steps; every other weight must agree closely.
    bound = params["train"]["lr"] * params["train"]["max_steps"]
    for key, value in weights[1].items():
        close = torch.isclose(weights[0][key], value, rtol=1e-4, atol=1e-5)
        assert close.float().mean() >= 0.999, key
        assert (weights[0][key] - value).abs().max() <= bound, key
