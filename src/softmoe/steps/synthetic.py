"""docs/study.md §5 E1: Soft MoE regressors of ||x||_2 (Theorem 1) and the numerical proof check.

Each run trains a NormRegressor (no normalization, no residual, fixed sum of the outputs) with
Adam on a fresh batch x ~ N(0, variance * I) every step, MSE, through Lightning (an
IterableDataset of fresh batches; one optimizer step per batch). Outputs per run folder:
loss.csv (step, loss), metrics.json, model.safetensors (+ metadata tokens, dim, n, seed). Each
(variance, tokens, n) is trained for every seed of synthetic.seeds, so that each final loss has an
interval over training seeds (docs/study.md §4).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from softmoe.base import atomic
from softmoe.model import modelfile
from softmoe.data.datasets import synthetic_batch
from softmoe.base.errors import UserError
from softmoe.model.models import NormRegressor, count_parameters
from softmoe.study.params import Synthetic, synthetic_shape
from softmoe.study.stats import final_loss
from softmoe.base.console import console_setup
from softmoe.base.vision import import_torchvision

import_torchvision()  # before Lightning, which imports torchvision through torchmetrics
import lightning.pytorch as pl  # noqa: E402,I001


class FreshBatches(IterableDataset):
    """An endless stream of (x, ||x||_2) batches from one seeded generator."""

    def __init__(self, batch_size: int, variance: float, seed: int):
        self.batch_size, self.variance, self.seed = batch_size, variance, seed

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            yield synthetic_batch(generator, self.batch_size, self.variance)


class NormRegression(pl.LightningModule):
    """MSE of the predicted norm; Adam with a constant lr; keeps every step's loss."""

    def __init__(self, model: NormRegressor, lr: float):
        super().__init__()
        self.model, self.lr = model, lr
        self.losses: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.model(x), y)
        if not torch.isfinite(loss):
            raise UserError(f"synthetic loss became {loss.item()} at step {self.global_step + 1}; "
                            "lower synthetic.lr in params.yaml")
        self.losses.append(loss.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)


def data_seed(seed: int) -> int:
    """Seed of the batch stream: derived from the run's seed, independent of the init stream."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])


def train_synthetic(syn: Synthetic, accelerator: str, variance: float, tokenization: str, n: int,
                    seed: int, out: Path) -> None:
    """Train one regressor (x ~ N(0, variance·I), tokenization like "5x2", n experts, training
    seed `seed`: initialization and batch stream) under params.synthetic on train.accelerator and
    write its run folder."""
    out = Path(out)
    tokens, dim = synthetic_shape(tokenization)
    pl.seed_everything(seed, verbose=False)
    model = NormRegressor(tokens, dim, n)
    module = NormRegression(model, syn.lr)
    loader = DataLoader(FreshBatches(syn.batch_size, variance, data_seed(seed)), batch_size=None)
    interactive = console_setup()
    trainer = pl.Trainer(accelerator=accelerator, devices=1,
                         max_steps=syn.steps, deterministic=True, logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=interactive, default_root_dir=str(out))
    trainer.fit(module, loader)
    losses = torch.stack(module.losses).cpu().tolist()
    atomic.write_csv(out / "loss.csv", pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses}))
    metadata = {"kind": "synthetic", "tokens": tokens, "dim": dim, "n": n, "seed": seed,
                "variance": variance}
    modelfile.save(out / "model.safetensors", model, metadata)
    atomic.write_json(out / "metrics.json", {
        "tokens": tokens, "dim": dim, "n": n, "variance": variance, "final_loss": final_loss(losses),
        "seed": seed, "steps": len(losses), "params_experts": count_parameters(model)["experts"]})


def load_regressor(run_dir: Path) -> NormRegressor:
    """The trained NormRegressor of a synthetic run folder (eval mode)."""
    path = Path(run_dir) / "model.safetensors"
    meta, state = modelfile.read(path, f"run `softmoe synthetic ... --out {run_dir}` first")
    if meta.get("kind") != "synthetic":
        raise UserError(f"{path}: not a synthetic ||x||_2 model (kind {meta.get('kind')!r}); "
                        "pass a results/synthetic/v<variance>/<tokens>/n<n>-s<seed> folder")
    model = NormRegressor(int(meta["tokens"]), int(meta["dim"]), int(meta["n"]))
    model.load_state_dict(state)
    return model.eval()


def proof_check(proof_scales: tuple[float, ...], run_dir: Path, out_csv: Path) -> None:
    """Theorem 1's mechanism on the trained n=1 model: input pairs (A, B) whose slot inputs
    Dᵀ A and Dᵀ B converge while | ||A|| - ||B|| | grows linearly in a, so one expert cannot
    predict both norms. proof_scales: params.synthetic.proof_scales, the a of each pair.

    The proof (docs/study.md §5 E1) picks a coordinate of the slot parameter Φ (d x 1) and splits on its
    value. phi_pos: we take j = argmax_j |Φ_j| and s = sign(Φ_j) (the proof's "Φ₁ > 0" after
    renaming coordinates and flipping the sign; the largest |Φ_j| makes the dispatch saturate
    fastest): A = a·s(e_1j − e_2j), B = a·s·e_1j, where e_ij is token i, coordinate j. Token 1
    then has logit a|Φ_j|, token 2 −a|Φ_j|, the rest 0, so D puts almost all its weight on
    token 1 for both inputs while ||A|| = √2·a and ||B|| = a. phi_zero: a trained Φ has no
    coordinate that is exactly 0, so we use the same construction along a unit vector v ⟂ Φ
    (coordinates rotated so that Φ's first one is 0; the proof only needs ⟨token, Φ⟩ = 0):
    A = (a/2)(v in tokens 1 and 2), B = a·v in token 1. All logits are 0, D is uniform and
    Dᵀ A = Dᵀ B = (a/m)·v exactly, while ||A|| = a/√2 and ||B|| = a. This case needs d >= 2.
    Everything is computed in float64 so that the convergence is not hidden by rounding.
    """
    model = load_regressor(Path(run_dir)).double()
    if model.moe.num_experts != 1:
        raise UserError(f"{run_dir}: the proof check is about the n=1 model, this one has "
                        f"n={model.moe.num_experts}; pass results/synthetic/v<variance>/<tokens>/n1-s<seed>")
    if model.tokens < 2:
        raise UserError(f"{run_dir}: the proof needs at least 2 tokens, the model has {model.tokens}")
    rows = []
    for case, (a_dir, b_dir) in _pair_directions(model).items():
        for a in proof_scales:
            rows.append({"case": case, "a": a, **_pair_gaps(model, a * a_dir, a * b_dir)})
    atomic.write_csv(out_csv, pd.DataFrame(rows, columns=[
        "case", "a", "slot_gap", "norm_gap", "abs_error_A", "abs_error_B"]))


def _pair_directions(model: NormRegressor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Unit-scale inputs (m, d) of each case; the pair at scale a is a times these."""
    phi = model.moe.phi.detach()[:, 0]                                   # (d,)
    m, d = model.tokens, model.dim
    j = int(phi.abs().argmax())
    s = 1.0 if phi[j] >= 0 else -1.0
    a_pos, b_pos = torch.zeros(m, d, dtype=phi.dtype), torch.zeros(m, d, dtype=phi.dtype)
    a_pos[0, j], a_pos[1, j], b_pos[0, j] = s, -s, s
    pairs = {"phi_pos": (a_pos, b_pos)}
    if d >= 2:
        k = int(phi.abs().argmin())
        v = -phi[k] / phi.dot(phi) * phi
        v[k] += 1.0                                                      # e_k minus its Φ part
        v = v / torch.linalg.vector_norm(v)
        a_zero, b_zero = torch.zeros(m, d, dtype=phi.dtype), torch.zeros(m, d, dtype=phi.dtype)
        a_zero[0], a_zero[1], b_zero[0] = v / 2, v / 2, v
        pairs["phi_zero"] = (a_zero, b_zero)
    return pairs


@torch.no_grad()
def _pair_gaps(model: NormRegressor, a_in: torch.Tensor, b_in: torch.Tensor) -> dict:
    x = torch.stack([a_in, b_in])                                        # (2, m, d)
    dispatch, _ = model.moe.routing(x)                                   # (2, m, 1)
    slots = dispatch.transpose(1, 2) @ x                                 # (2, 1, d): Dᵀ X
    norms = torch.linalg.vector_norm(x.flatten(1), dim=1)
    errors = (model(x.flatten(1)) - norms).abs()
    return {"slot_gap": float(torch.linalg.vector_norm(slots[0] - slots[1])),
            "norm_gap": float((norms[0] - norms[1]).abs()),
            "abs_error_A": float(errors[0]), "abs_error_B": float(errors[1])}
