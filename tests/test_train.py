"""Lightning training of one grid model: outputs, bitwise reproducibility, resume after a crash,
refusals (other run's checkpoint, NaN loss, OOM), load_trained, and the ViT recipe path."""
from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from softmoe.base import numerics
from softmoe.data import datasets
from softmoe.model import modelfile
from softmoe.steps import train
from softmoe.base.errors import UserError
from softmoe.model.models import MnistSoftMoE
from softmoe.study.params import Study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params() -> dict:
    """The study's recipe, shortened: 40 steps of batch 512 (8 steps per epoch of 4,000)."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["train"].update(max_steps=40, batch_size=512)
    return p


def _train(params: dict, data_dir: Path, n: int, seed: int, out: Path) -> dict:
    """train.train_run with the sections of a params mapping (built per call: tests edit it)."""
    study = Study.of(params)
    return train.train_run(study.train, study.model, study.dataset_entry, data_dir, n, seed, out)


def _model(params: dict):
    return Study.of(params).model


def _metrics(run: Path) -> dict:
    """metrics.json whole: it carries no timing (timing.json does), so identical runs agree on all of it."""
    return json.loads((run / "metrics.json").read_text())


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class Crash(Exception):
    """Stands in for a kill: raised inside a training step, nothing is saved on the way out."""


def _crash_at(monkeypatch, step: int) -> list[int]:
    """Make training_step raise at `step` (with last.ckpt written after every epoch); return the
    list of steps that did run."""
    monkeypatch.setattr(train, "CHECKPOINT_EVERY_S", 0.0)
    ran: list[int] = []
    original = train.Classifier.training_step

    def step_or_crash(self, batch, batch_idx):
        if self.global_step == step:
            raise Crash(f"simulated kill at step {step}")
        ran.append(self.global_step)
        return original(self, batch, batch_idx)
    monkeypatch.setattr(train.Classifier, "training_step", step_or_crash)
    return ran


# ---- outputs and reproducibility -----------------------------------------------------------
def test_outputs_follow_the_file_contract(params, mnist5k, tmp_path, capsys):
    metrics = _train(params, mnist5k, 16, 0, tmp_path)
    assert set(metrics) == {"dataset", "n", "seed", "test_accuracy", "test_loss", "train_loss",
                            "params_total", "params_experts", "expert_hidden", "epochs", "steps", "device"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["steps"] == 40 and metrics["epochs"] == 5 and metrics["device"] == "cpu"
    timing = json.loads((tmp_path / "timing.json").read_text())     # this host's facts, apart from the science
    assert set(timing) == {"dataset", "n", "seed", "wall_time_s", "device", "threads", "numerics", "cpu",
                           "aten_capability"}
    assert timing["threads"] == 1 and timing["wall_time_s"] > 0 and timing["device"] == "cpu"
    assert timing["numerics"] == numerics.mode() and timing["cpu"] == numerics.cpu_id()
    counts = (metrics["params_total"], metrics["params_experts"], metrics["expert_hidden"])
    assert counts == (318_305, 307_328, 49)                   # docs/study.md §3 at n=16
    assert metrics["test_accuracy"] > 0.4                     # far above chance after 40 steps
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert list(curves.columns) == train.CURVE_COLUMNS
    assert curves["epoch"].tolist() == [1, 2, 3, 4, 5] and curves["step"].tolist() == [8, 16, 24, 32, 40]
    last = curves.iloc[-1]                                    # the last row is the last weights
    assert last["test_accuracy"] == metrics["test_accuracy"]
    assert last["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    assert last["train_loss"] == metrics["train_loss"]
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"dataset": "mnist5k", "n": "16", "seed": "0", "kind": "mnist",
                                "num_classes": "10", "img_size": "28", "in_chans": "1"}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    run = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["softmoe"]["run"]
    assert run["model"] == params["model"]                   # the sections as the file gives them:
    assert run["train"] == {k: v for k, v in params["train"].items()   # older checkpoints resume
                            if k not in train.HARDWARE_KEYS}
    dvclive = tmp_path / "dvclive" / "plots" / "metrics" / "test" / "accuracy.tsv"
    assert len(dvclive.read_text().splitlines()) == 1 + 5     # one point per epoch
    err = capsys.readouterr().err
    assert "Epoch" not in err and "it/s" not in err          # no progress bar off a TTY


def test_fixed_seed_is_bitwise_reproducible(params, mnist5k, tmp_path):
    params["train"]["max_steps"] = 12
    for run in ("a", "b"):
        _train(params, mnist5k, 4, 0, tmp_path / run)
    _train(params, mnist5k, 4, 1, tmp_path / "other-seed")
    assert _same_weights(tmp_path / "a", tmp_path / "b")
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert (tmp_path / "a" / "curves.csv").read_text() == (tmp_path / "b" / "curves.csv").read_text()
    assert not _same_weights(tmp_path / "a", tmp_path / "other-seed")


def test_resume_after_kill_ends_like_an_uninterrupted_run(params, mnist5k, tmp_path, monkeypatch):
    _train(params, mnist5k, 8, 0, tmp_path / "straight")
    ran = _crash_at(monkeypatch, 21)                          # mid-epoch 3 (8 steps per epoch)
    with pytest.raises(Crash):
        _train(params, mnist5k, 8, 0, tmp_path / "killed")
    saved = torch.load(tmp_path / "killed/checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 16 and not (tmp_path / "killed/metrics.json").exists()
    monkeypatch.undo()
    ran = _crash_at(monkeypatch, -1)                          # count the steps of the rerun
    _train(params, mnist5k, 8, 0, tmp_path / "killed")
    assert ran == list(range(16, 40))                         # continued, did not restart
    assert _same_weights(tmp_path / "straight", tmp_path / "killed")
    assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "killed")
    assert (tmp_path / "straight/curves.csv").read_text() == (tmp_path / "killed/curves.csv").read_text()
    ran.clear()
    _train(params, mnist5k, 8, 0, tmp_path / "killed")   # finished: nothing to redo
    assert ran == [] and _same_weights(tmp_path / "straight", tmp_path / "killed")


def test_checkpoint_of_another_run_is_refused(params, mnist5k, tmp_path):
    params["train"]["max_steps"] = 8
    _train(params, mnist5k, 2, 0, tmp_path)
    with pytest.raises(UserError, match=r"last\.ckpt: checkpoint of another run \(n: 2 \(now 4\)\).*delete"):
        _train(params, mnist5k, 4, 0, tmp_path)
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"truncated")
    with pytest.raises(UserError, match="unreadable checkpoint"):
        _train(params, mnist5k, 2, 0, tmp_path)


def test_checkpoint_under_another_recipe_is_set_aside_not_resumed(params, mnist5k, tmp_path, capsys):
    """After a params change (Snakemake/DVC rerun the step), the old checkpoint is not used."""
    params["train"]["max_steps"] = 8
    _train(params, mnist5k, 2, 0, tmp_path / "a")
    params["train"]["lr"] = 0.01
    fresh = _train(params, mnist5k, 2, 0, tmp_path / "b")
    again = _train(params, mnist5k, 2, 0, tmp_path / "a")
    assert "training from the start" in capsys.readouterr().err
    assert (tmp_path / "a/checkpoints/last.ckpt.stale").is_file()
    assert again["test_accuracy"] == fresh["test_accuracy"] and _same_weights(tmp_path / "a", tmp_path / "b")


def test_checkpoint_of_other_code_paths_is_set_aside_not_resumed(params, mnist5k, tmp_path, capsys, monkeypatch):
    """A checkpoint written under native code paths is not resumed by a pinned run (softmoe.base.numerics):
    the weights would mix both roundings."""
    params["train"]["max_steps"] = 8
    with monkeypatch.context() as m:
        m.setattr(numerics, "mode", lambda: "native (SOFTMOE_NATIVE=1)")
        _train(params, mnist5k, 2, 0, tmp_path / "a")
    _train(params, mnist5k, 2, 0, tmp_path / "a")
    err = capsys.readouterr().err
    assert "training from the start" in err and "changed: numerics" in err


class _Diverging(MnistSoftMoE):
    """Returns NaN logits from the 12th training forward pass on."""

    def __init__(self, num_experts, num_classes):
        super().__init__(num_experts, num_classes)
        self.calls = 0

    def forward(self, images, k=None, renormalize=False, keep=None):
        logits = super().forward(images, k=k, renormalize=renormalize, keep=keep)
        if self.training:
            self.calls += 1
            if self.calls >= 12:
                return logits * float("nan")
        return logits


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(params, mnist5k, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "build_model", lambda model, n, classes, chans, dropout: _Diverging(n, classes))
    with pytest.raises(UserError, match=r"train loss became nan at step 12 \(epoch 2\).*"
                                        r"last good checkpoint: .*last\.ckpt.*train\.lr"):
        _train(params, mnist5k, 2, 0, tmp_path)
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 8


def test_cuda_out_of_memory_says_reduce_batch_size(params, mnist5k, tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(train.pl.Trainer, "fit", oom)
    with pytest.raises(UserError, match="reduce train.batch_size"):
        _train(params, mnist5k, 2, 0, tmp_path)


# ---- load_trained --------------------------------------------------------------------------
def test_load_trained_returns_the_weights_and_refuses_other_runs(params, mnist5k, tmp_path):
    params["train"]["max_steps"] = 8
    _train(params, mnist5k, 4, 0, tmp_path)
    model = modelfile.load_trained(tmp_path, _model(params), expect={"dataset": "mnist5k", "n": 4, "seed": 0})
    assert not model.training and model.moe.num_experts == 4
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    images, labels = datasets.load_split(mnist5k, "test")
    with torch.no_grad():
        inputs = datasets.model_inputs(images, Study.of(params).train, _model(params))
        accuracy = (model(inputs).argmax(1) == labels).sum().item() / len(labels)
    assert accuracy == json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"]
    with pytest.raises(UserError, match=r"n='4' \(expected '8'\)"):
        modelfile.load_trained(tmp_path, _model(params), expect={"n": 8})
    with pytest.raises(UserError, match=r"dataset='mnist5k' \(expected 'cifar10'\)"):
        modelfile.load_trained(tmp_path, _model(params), expect={"dataset": "cifar10"})
    params["model"] = {"kind": "vit"}
    with pytest.raises(UserError, match=r"kind='mnist' \(expected 'vit'\)"):
        modelfile.load_trained(tmp_path, _model(params))
    with pytest.raises(UserError, match="not found"):
        modelfile.load_trained(tmp_path / "missing", _model(params))


# ---- the ViT recipe: LAMB, cosine + warmup, mixup/cutmix, label smoothing, dropout ----------
def _write_prepared(folder: Path, dataset: str, entry: dict, splits: dict, num_classes: int) -> None:
    """A prepared data folder written straight from the file contract (docs/architecture.md)."""
    folder.mkdir(parents=True)
    files, summary = {}, {}
    for split, (images, labels) in splits.items():
        save_file({"images": images, "labels": labels}, str(folder / f"{split}.safetensors"))
        files[f"{split}.safetensors"] = hashlib.sha256(
            (folder / f"{split}.safetensors").read_bytes()).hexdigest()
        summary[split] = {"size": len(labels),
                          "class_counts": np.bincount(labels.numpy(), minlength=num_classes).tolist()}
    manifest = {"dataset": dataset, "source": entry["source"], "params": entry, "splits": summary,
                "files": files, "image_shape": list(splits["train"][0].shape[1:]),
                "num_classes": num_classes}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def tiny_vit(tmp_path):
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    entry = {"source": "torchvision", "root": "data/raw/cifar10", "download": False}
    p["dataset"], p["datasets"]["cifar10"] = "cifar10", entry
    p["model"] = {"kind": "vit", "img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 2,
                  "num_heads": 2, "moe_blocks": 1, "expert_mult": 4}
    p["train"].update(optimizer="lamb", lr=0.003, weight_decay=0.05, batch_size=16, max_steps=14,
                      schedule="cosine", warmup_epochs=1, label_smoothing=0.1, mixup=0.8, cutmix=1.0,
                      dropout=0.1, normalize_mean=[0.5, 0.5, 0.5], normalize_std=[0.25] * 3)
    g = torch.Generator().manual_seed(0)
    splits = {s: (torch.randint(0, 256, (size, 3, 32, 32), generator=g, dtype=torch.uint8),
                  torch.randint(0, 10, (size,), generator=g)) for s, size in (("train", 68), ("test", 20))}
    _write_prepared(tmp_path / "cifar10", "cifar10", entry, splits, 10)
    return p, tmp_path / "cifar10"


def test_vit_recipe_resumes_bitwise_with_random_augmentation(tiny_vit, tmp_path, monkeypatch):
    p, prepared = tiny_vit
    straight = _train(p, prepared, 4, 0, tmp_path / "straight")
    assert straight["steps"] == 14 and straight["epochs"] == 4   # 68 images: 4 full batches of 16
    assert np.isfinite(straight["test_loss"])
    _crash_at(monkeypatch, 10)
    with pytest.raises(Crash):
        _train(p, prepared, 4, 0, tmp_path / "killed")
    saved = torch.load(tmp_path / "killed/checkpoints/last.ckpt", weights_only=True)
    assert saved["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(      # warmup 4, cosine to 14
        0.003 * train.lr_factor(8, 14, 4, "cosine"))
    monkeypatch.undo()
    _train(p, prepared, 4, 0, tmp_path / "killed")
    assert _same_weights(tmp_path / "straight", tmp_path / "killed")
    assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "killed")
    with safe_open(str(tmp_path / "straight" / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["img_size"] == "16" and f.metadata()["in_chans"] == "3"
    model = modelfile.load_trained(tmp_path / "straight", _model(p), expect={"dataset": "cifar10", "n": 4})
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_lr_schedule_warmup_then_constant_or_cosine():
    assert [train.lr_factor(s, 100, 4, "constant") for s in (0, 1, 3, 4, 99)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert train.lr_factor(4, 104, 4, "cosine") == 1.0
    assert train.lr_factor(54, 104, 4, "cosine") == pytest.approx(0.5)
    assert train.lr_factor(104, 104, 4, "cosine") == pytest.approx(0.0, abs=1e-12)


# ---- a real kill -9 of the CLI ---------------------------------------------------------------
@pytest.mark.e2e
def test_cli_killed_with_sigkill_resumes_on_rerun(params, mnist5k, tmp_path):
    params["train"].update(max_steps=160, batch_size=256)          # 10 epochs of 16 steps
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = tmp_path / "killed"
    command = [shutil.which("softmoe") or str(Path(sys.executable).with_name("softmoe")), "train",
               "--params", str(tmp_path / "params.yaml"), "--data", str(mnist5k), "--experts", "4",
               "--seed", "0", "--out", str(run), "--threads", "1"]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    assert job.wait(timeout=60) == -signal.SIGKILL
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 16 <= step < 160 and not (run / "metrics.json").exists()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming {run / 'checkpoints' / 'last.ckpt'} (step {step})" in rerun.stderr
    _train(params, mnist5k, 4, 0, tmp_path / "straight")
    assert _same_weights(tmp_path / "straight", run)
    assert _metrics(tmp_path / "straight") == _metrics(run)


class _Payload:
    """Unpickling this runs a shell command: what a malicious shared checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_a_planted_malicious_checkpoint_is_refused_and_never_run(params, mnist5k, tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "run/checkpoints").mkdir(parents=True)
    torch.save({"state_dict": _Payload(marker)}, tmp_path / "run/checkpoints/last.ckpt")
    with pytest.raises(UserError, match="last.ckpt: unreadable checkpoint"):
        _train(params, mnist5k, 2, 0, tmp_path / "run")
    assert not marker.exists()


def test_checkpoint_of_other_training_code_is_set_aside_not_resumed(params, mnist5k, tmp_path, capsys,
                                                                     monkeypatch):
    """After a change to the training code (both engines rerun the step), weights trained by the
    old code are not resumed: the checkpoint is set aside and the run trains from the start."""
    params["train"]["max_steps"] = 8
    _train(params, mnist5k, 2, 0, tmp_path / "a")
    code = train.code_digests()
    assert "src/softmoe/model/layer.py" in code and "src/softmoe/steps/train.py" in code
    monkeypatch.setattr(train, "code_digests", lambda: {**code, "src/softmoe/model/layer.py": "edited"})
    again = _train(params, mnist5k, 2, 0, tmp_path / "a")
    err = capsys.readouterr().err
    assert "changed: src/softmoe/model/layer.py)" in err and "training from the start" in err
    assert (tmp_path / "a/checkpoints/last.ckpt.stale").is_file() and again["steps"] == 8
