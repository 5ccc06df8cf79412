"""One model of the expert grid (dataset, n, seed) trained with Lightning, resumable.

Run folder (docs/architecture.md): model.safetensors (+ metadata), metrics.json (science only),
timing.json (wall time, device name, threads, CPU and code paths: what may differ between hosts),
curves.csv, checkpoints/last.ckpt, dvclive/. last.ckpt is written at the end of an epoch: the first, the last,
and any that ends CHECKPOINT_EVERY_S seconds or more after the previous write (a killed run repeats
at most that much training; writing it every epoch cost up to ~15 % of an MNIST run). A rerun with
checkpoints/last.ckpt present continues from it (after a crash or kill -9) and ends with the same
weights and metrics as an uninterrupted run: the checkpoint holds the model, optimizer, schedule,
loop counters, the curves so far and the RNG states, and the shuffling is a function of
(seed, epoch). A checkpoint of other params, data or training code (sha256 of the train step's
source files) is set aside and the run starts over. The test split is evaluated after every
epoch for the curves only; the reported test metrics are those of the last weights (no
checkpoint is picked on the test set).
"""
from __future__ import annotations

import hashlib
import json
import pickle  # only for its error type: checkpoints load with weights_only=True
import math
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from softmoe.base import atomic, numerics
from softmoe.model import modelfile
from softmoe.provenance import deps
from softmoe.base.console import console_setup
from softmoe.data.datasets import model_inputs
from softmoe.data.datamodule import ImageDataModule
from softmoe.base.errors import UserError
from softmoe.model.layer import SoftMoE
from softmoe.model.modelfile import build_model
from softmoe.model.models import count_parameters
from softmoe.study.params import Dataset, Model, Train

import lightning.pytorch as pl  # noqa: E402,I001  (after softmoe.data.datamodule, which prepares torchvision)
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.plugins.io import TorchCheckpointIO  # noqa: E402
from lightning.pytorch.utilities import rank_zero_only  # noqa: E402

# params.train keys that may differ between a run and its resumption (where it runs, not what).
HARDWARE_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "num_workers")
CHECKPOINT_EVERY_S = 10.0    # seconds of training a kill may cost at most (see the docstring)
CURVE_COLUMNS = ["epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]   # curves.csv


class Classifier(pl.LightningModule):
    """Owns the optimization of one image classifier: cross-entropy (label smoothing, or timm
    Mixup/CutMix soft targets), Adam/AdamW/LAMB, constant or cosine schedule with linear warmup.
    recipe: params.train; spec: params.model (the inputs it takes)."""

    def __init__(self, recipe: Train, spec: Model, model: nn.Module, run: dict, num_classes: int):
        super().__init__()
        self.recipe, self.spec, self.model, self.run = recipe, spec, model, run
        self.curves: list[dict] = []
        self.train_time_s = 0.0
        self._started = time.perf_counter()
        self._sums = torch.zeros(3)
        self.mixup = _mixup(recipe, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(model_inputs(images, self.recipe, self.spec))

    # ---- optimization --------------------------------------------------------------------
    def configure_optimizers(self):
        t = self.recipe
        optimizer = _optimizer(self.model, t.optimizer, t.lr, t.weight_decay)
        per_epoch = len(self.trainer.datamodule.train_dataloader())     # this process's batches
        total = t.max_steps or t.epochs * per_epoch
        warmup = t.warmup_epochs * per_epoch
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total, warmup, t.schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        self._sums = torch.zeros(3, device=self.device)     # loss * count, correct, count

    def training_step(self, batch, batch_idx):
        images, labels = batch
        x = model_inputs(images, self.recipe, self.spec)
        if self.mixup is not None:
            x, soft = self.mixup(x, labels)
            logits = self.model(x)
            loss = torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            logits = self.model(x)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.recipe.label_smoothing)
        if not torch.isfinite(loss):
            self._stop_on_bad_loss(loss)
        self._sums += _batch_sums(loss, logits, labels)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """At max_steps in the middle of an epoch, ask Lightning to stop like early stopping does,
        so that this last partial epoch is also validated and checkpointed."""
        if 0 < self.trainer.max_steps <= self.global_step:
            self.trainer.should_stop = True

    def _stop_on_bad_loss(self, loss: torch.Tensor):
        last = Path(self.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        good = f"last good checkpoint: {last}" if last.is_file() else "no checkpoint yet"
        raise UserError(
            f"train loss became {loss.item()} at step {self.global_step + 1} (epoch "
            f"{self.current_epoch + 1}); run stopped, {good}. A rerun resumes there and meets the "
            "same step: lower train.lr (then delete the checkpoints folder) or check the data")

    # ---- per-epoch curves: the test split as Lightning's validation set ----------------------
    def on_validation_epoch_start(self) -> None:
        self._test_sums = torch.zeros(3, device=self.device)

    def validation_step(self, batch, batch_idx) -> None:
        images, labels = batch
        logits = self(images)
        self._test_sums += _batch_sums(F.cross_entropy(logits, labels), logits, labels)

    def on_validation_epoch_end(self) -> None:
        """One row of curves.csv (runs before the epoch's checkpoint is written, so the
        checkpoint holds the curves up to and including its own epoch)."""
        train = self.trainer.strategy.reduce(self._sums, reduce_op="sum").tolist()
        test = self._test_sums.tolist()    # every process evaluated the whole test split
        row = {"epoch": self.current_epoch + 1, "step": self.global_step,
               "train_loss": train[0] / train[2], "train_accuracy": train[1] / train[2],
               "test_loss": test[0] / test[2], "test_accuracy": test[1] / test[2]}
        self.curves.append(row)
        for logger in self.loggers:
            logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=self.global_step,
                               sync=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["softmoe"] = {"run": self.run, "curves": self.curves, "rng": _rng_state(),
                                 "train_time_s": self.train_time()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["softmoe"]
        self.curves, self.train_time_s = state["curves"], state["train_time_s"]
        self._started = time.perf_counter()
        _set_rng_state(state["rng"])

    def train_time(self) -> float:
        """Seconds spent in this run so far, over all its (resumed) invocations."""
        return self.train_time_s + time.perf_counter() - self._started


def _batch_sums(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[loss * count, correct, count] of one batch, for exact epoch means without a sync per step."""
    count = float(len(labels))
    correct = (logits.argmax(1) == labels).sum().float()
    return torch.stack([loss.detach() * count, correct, loss.new_tensor(count)])


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step `step`: linear warmup, then constant or cosine
    decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """adam / adamw (torch's fused kernel: one pass over each parameter, on CPU and CUDA) or lamb
    (timm); weight decay skips biases, scales and other <=1-d parameters (the DeiT/timm convention)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    if name == "lamb":
        from timm.optim import Lamb
        return Lamb(groups, lr=lr)
    raise UserError(f"key 'train.optimizer': {name!r} is not supported; use adam, adamw or lamb")


def _mixup(train: Train, num_classes: int):
    """timm Mixup/CutMix (with label smoothing in its soft targets) when either alpha is > 0."""
    if not (train.mixup or train.cutmix):
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=train.mixup, cutmix_alpha=train.cutmix,
                 label_smoothing=train.label_smoothing, num_classes=num_classes)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": np_state[2], "numpy_gauss": [np_state[3], np_state[4]],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32),
                         state["numpy_pos"], *state["numpy_gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def evaluate(model: nn.Module, loader, train: Train, spec: Model, device: torch.device | str
             ) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model on every batch of the loader, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(model_inputs(images, train, spec))
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
    model.train(was_training)
    return loss_sum / count, correct / count


# ---- one run ---------------------------------------------------------------------------------
def train_run(train: Train, model: Model, entry: Dataset, data_dir: Path, n: int, seed: int,
              out: Path, order: dict | None = None) -> dict:
    """Train (or resume) the model of params.model with n experts under the recipe params.train
    on the prepared data (checked against the dataset entry); write the run folder.

    order: {order_seed, train_subset} trains on a fixed permutation of the training split, cut
    to its first train_subset images (a hypothesis's `overrides.data`; data.train_order).

    Returns metrics.json's content (an empty dict on the non-zero ranks of a DDP run)."""
    out = Path(out)
    datamodule = ImageDataModule(train, model, entry, data_dir, seed, order=order)
    pl.seed_everything(seed, workers=True, verbose=False)
    net = build_model(model, n, datamodule.num_classes, datamodule.in_chans, dropout=train.dropout)
    run = _run_identity(train, model, datamodule, n, seed)
    if order:
        run["order"] = dict(order)
    module = Classifier(train, model, net, run, datamodule.num_classes)
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        step, changed = _check_resumable(last, run)
        if step is None:
            stale = last.with_suffix(".ckpt.stale")
            last.replace(stale)
            _say(f"softmoe train: {last} was written under other params, data or code (changed: "
                 f"{', '.join(changed)}); kept as {stale.name}, training from the start")
        else:
            _say(f"softmoe train: resuming {last} (step {step})")
    trainer = _trainer(train, out, resume=last.is_file())
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=last if last.is_file() else None,
                    weights_only=True)
    except torch.OutOfMemoryError:
        raise UserError(f"out of GPU memory with train.batch_size={train.batch_size}: "
                        "reduce train.batch_size in params.yaml (or add devices)") from None
    if not trainer.is_global_zero:
        return {}
    return _write_outputs(module, datamodule, trainer, out)


def _run_identity(train: Train, model: Model, datamodule: ImageDataModule, n: int, seed: int) -> dict:
    """What a checkpoint must match to be resumed: dataset, n, seed, model, recipe (the sections as
    the params file gave them), data, and the training code: the sha256 of every source file of
    the train step (softmoe.provenance.deps), so that weights trained by other code are never resumed."""
    manifest = json.dumps(datamodule.manifest, sort_keys=True).encode()
    return {"dataset": datamodule.manifest["dataset"], "n": n, "seed": seed,
            "model": model.raw,
            "train": {k: v for k, v in train.raw.items() if k not in HARDWARE_KEYS},
            "data_sha256": hashlib.sha256(manifest).hexdigest(),
            "code": code_digests(), "numerics": numerics.mode()}


def code_digests() -> dict[str, str]:
    """{src/softmoe/<file>: sha256} of the files the train step's code is made of."""
    return deps.code_digests(deps.step_deps("train"))


@rank_zero_only
def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_resumable(path: Path, run: dict) -> tuple[int | None, list[str]]:
    """(global step, []) for a checkpoint of this run; (None, what changed) for one of this
    (dataset, n, seed) made under another recipe, data or code (stale: start over); refuse one of
    another (dataset, n, seed)."""
    fix = f"delete {path.parent} to train this run from the start, or use another --out"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise UserError(f"{path}: unreadable checkpoint ({str(err).splitlines()[0]}); {fix}") from None
    other = checkpoint.get("softmoe", {}).get("run", {})
    diff = sorted(k for k in set(run) | set(other) if run.get(k) != other.get(k))
    shown = ", ".join(f"{k}: {other.get(k)!r} (now {run.get(k)!r})" for k in diff
                      if k in ("dataset", "n", "seed"))
    if shown:
        raise UserError(f"{path}: checkpoint of another run ({shown}); resuming it would mix two "
                        f"runs; {fix}")
    if not diff:
        return checkpoint["global_step"], []
    code, old_code = run.get("code", {}), other.get("code", {})
    files = sorted(f for f in set(code) | set(old_code) if code.get(f) != old_code.get(f))
    return None, [k for k in diff if k != "code"] + files


class EpochCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt after the validation of the first and the last epoch of this
    invocation, and of every epoch that ends CHECKPOINT_EVERY_S seconds or more after the previous
    write. Any epoch boundary resumes exactly, so when it is written does not change the results."""

    def __init__(self, out: Path):
        super().__init__(dirpath=out / "checkpoints", filename="last", save_top_k=1, every_n_epochs=1,
                         save_on_train_epoch_end=False, enable_version_counter=False)
        self._written_at: float | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = trainer.should_stop or trainer.current_epoch + 1 == trainer.max_epochs
        due = self._written_at is None or time.monotonic() - self._written_at >= CHECKPOINT_EVERY_S
        if last or due:
            super().on_validation_end(trainer, pl_module)
            self._written_at = time.monotonic()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written like every output (atomic.py): a temporary file next to last.ckpt,
    renamed over it. Lightning's own save writes into $TMPDIR and moves the file; where $TMPDIR is
    another filesystem than the run folder (tmpfs, a node's local disk) the move is a copy onto
    last.ckpt, and a kill -9 during it leaves a truncated checkpoint that stops the rerun."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)   # Lightning's error
        with atomic.atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def _trainer(t: Train, out: Path, resume: bool) -> pl.Trainer:
    from dvclive.lightning import DVCLiveLogger

    interactive = console_setup()
    if resume:
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    # One file, checkpoints/last.ckpt, rewritten after an epoch's validation (Lightning resumes
    # correctly from there; from a save at on_train_epoch_end without validation it does not).
    checkpoint = EpochCheckpoint(out)
    logger = DVCLiveLogger(dir=str(out / "dvclive"), dvcyaml=False, save_dvc_exp=False,
                           resume=resume)
    return pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, max_steps=t.max_steps or -1,
        max_epochs=None if t.max_steps else t.epochs,
        deterministic=True, use_distributed_sampler=False, logger=logger, callbacks=[checkpoint],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=interactive, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=1, default_root_dir=str(out))


def _write_outputs(module: Classifier, datamodule: ImageDataModule, trainer: pl.Trainer,
                   out: Path) -> dict:
    """Evaluate the last weights on the test split; write model, curves, metrics (science: the
    same bytes on any host of the same code paths) and timing.json (this host's facts)."""
    model, run, device, spec = module.model, module.run, trainer.strategy.root_device, module.spec
    test_loss, test_accuracy = evaluate(model.to(device), datamodule.test_dataloader(), module.recipe,
                                        spec, device)
    counts = count_parameters(model)
    shape = datamodule.manifest["image_shape"]
    metadata = {"dataset": run["dataset"], "n": run["n"], "seed": run["seed"],
                "kind": spec.kind, "num_classes": datamodule.num_classes,
                "img_size": shape[-1] if spec.kind == "mnist" else spec.img_size,
                "in_chans": datamodule.in_chans}
    modelfile.save(out / "model.safetensors", model, metadata)
    atomic.write_csv(out / "curves.csv", pd.DataFrame(module.curves, columns=CURVE_COLUMNS))
    metrics = {"dataset": run["dataset"], "n": run["n"], "seed": run["seed"],
               "test_accuracy": test_accuracy, "test_loss": test_loss,
               "train_loss": module.curves[-1]["train_loss"] if module.curves else None,
               "params_total": counts["total"], "params_experts": counts["experts"],
               "expert_hidden": next(m for m in model.modules() if isinstance(m, SoftMoE)).expert_hidden,
               "epochs": len(module.curves), "steps": trainer.global_step, "device": device.type}
    atomic.write_json(out / "metrics.json", metrics)
    timing = {"dataset": run["dataset"], "n": run["n"], "seed": run["seed"],
              "wall_time_s": round(module.train_time(), 3), "device": _device_name(device),
              "threads": torch.get_num_threads(), **numerics.facts()}
    atomic.write_json(out / "timing.json", timing)
    return metrics


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
