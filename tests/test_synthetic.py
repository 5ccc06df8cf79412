"""E1: the synthetic ||x||_2 runs (n=1 cannot fit the norm, n=10 can) and the proof check.

The plateau test uses a short run (batch 1,000, 250 steps, lr 1e-2 instead of the study's
10,000 / 500 / 1e-3) so that it takes seconds; measured here: 5x2 n=1 6.58 vs n=10 0.45,
2x5 n=1 2.52 vs n=10 0.35 (final loss = mean MSE of the last 10% of steps)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from softmoe.steps import synthetic
from softmoe.base.errors import UserError
from softmoe.study.params import Synthetic

ROOT = Path(__file__).resolve().parents[1]
SHORT = {"batch_size": 1000, "steps": 250, "lr": 0.01}
VARIANCE = 5.0          # x ~ N(0, 5·I), as `softmoe synthetic --variance 5` passes it


def _synthetic(**overrides) -> Synthetic:
    """params.synthetic of the study with these keys changed."""
    return Synthetic.of({**yaml.safe_load((ROOT / "params.yaml").read_text())["synthetic"], **overrides})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """n=1 and n=10 for both tokenizations, trained once for this module (before conftest's
    per-test reset, hence the thread count here)."""
    torch.set_num_threads(1)
    p, root = _synthetic(**SHORT), tmp_path_factory.mktemp("synthetic")
    folders = {}
    for tokens in ("5x2", "2x5"):
        for n in (1, 10):
            folders[tokens, n] = root / tokens / f"n{n}"
            synthetic.train_synthetic(p, "auto", VARIANCE, tokens, n, 0, folders[tokens, n])
    return folders


def _final(folder: Path) -> float:
    return json.loads((folder / "metrics.json").read_text())["final_loss"]


@pytest.mark.parametrize("tokens", ["5x2", "2x5"])
def test_one_expert_plateaus_far_above_ten(runs, tokens):
    one, ten = _final(runs[tokens, 1]), _final(runs[tokens, 10])
    assert one > 5 * ten, f"{tokens}: n=1 {one:.3f} vs n=10 {ten:.3f}"
    assert ten < 1.0


@pytest.mark.parametrize("tokens, dim", [("5x2", 2), ("2x5", 5)])
def test_outputs_follow_the_file_contract(runs, tokens, dim):
    folder = runs[tokens, 10]
    loss = pd.read_csv(folder / "loss.csv")
    assert list(loss.columns) == ["step", "loss"] and loss["step"].tolist() == list(range(1, 251))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == {"tokens": 10 // dim, "dim": dim, "n": 10, "seed": 0, "steps": 250, "variance": VARIANCE,
                       "final_loss": pytest.approx(loss["loss"].tail(25).mean(), rel=1e-12),
                       "params_experts": 20 * dim * dim}
    assert loss["loss"].iloc[:10].mean() > 3 * metrics["final_loss"]       # it trained
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"kind": "synthetic", "tokens": str(10 // dim), "dim": str(dim),
                                "n": "10", "seed": "0", "variance": "5.0"}


def test_same_seed_same_run(tmp_path):
    p = _synthetic(batch_size=500, steps=20, lr=0.01)
    for run in ("a", "b"):
        synthetic.train_synthetic(p, "auto", VARIANCE, "5x2", 2, 0, tmp_path / run)
    assert (tmp_path / "a/loss.csv").read_text() == (tmp_path / "b/loss.csv").read_text()
    wa, wb = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the other reading of N(0, 5I): same seed, larger inputs, a larger loss; the variance is recorded
    synthetic.train_synthetic(p, "auto", 25.0, "5x2", 2, 0, tmp_path / "v25")
    first = [pd.read_csv(tmp_path / f"{r}/loss.csv")["loss"].iloc[:5].mean() for r in ("a", "v25")]
    assert first[1] > 2 * first[0]
    assert json.loads((tmp_path / "v25/metrics.json").read_text())["variance"] == 25.0
    synthetic.train_synthetic(p, "auto", VARIANCE, "5x2", 2, 1, tmp_path / "c")
    assert (tmp_path / "a/loss.csv").read_text() != (tmp_path / "c/loss.csv").read_text()
    assert json.loads((tmp_path / "c/metrics.json").read_text())["seed"] == 1


@pytest.mark.parametrize("tokens", ["5x2", "2x5"])
def test_proof_check_slot_inputs_converge_while_norms_separate(runs, tokens, tmp_path):
    scales = _synthetic().proof_scales
    out = tmp_path / "proof.csv"
    synthetic.proof_check(scales, runs[tokens, 1], out)
    proof = pd.read_csv(out)
    assert list(proof.columns) == ["case", "a", "slot_gap", "norm_gap", "abs_error_A", "abs_error_B"]
    for case, ratio in (("phi_pos", math.sqrt(2) - 1), ("phi_zero", 1 - 1 / math.sqrt(2))):
        rows = proof[proof["case"] == case]
        assert rows["a"].tolist() == list(scales)
        assert rows["norm_gap"].tolist() == pytest.approx([a * ratio for a in scales], rel=1e-12)
        # equal slot inputs give equal predictions, so the two errors add up to the norm gap
        big = rows[rows["slot_gap"] < 1e-9]
        assert len(big) >= 2 and big["a"].max() == max(scales)
        assert (big["abs_error_A"] + big["abs_error_B"] >= big["norm_gap"] * (1 - 1e-9)).all()
    zero = proof[proof["case"] == "phi_zero"]
    assert (zero["slot_gap"] < 1e-12).all()                               # exactly equal D^T X
    pos = proof[proof["case"] == "phi_pos"]
    assert pos["slot_gap"].iloc[-1] < 1e-9 < pos["slot_gap"].iloc[0]       # converges as a grows


def test_proof_check_refuses_other_models(runs, tmp_path):
    with pytest.raises(UserError, match="n=1 model, this one has n=10"):
        synthetic.proof_check(_synthetic().proof_scales, runs["5x2", 10], tmp_path / "p.csv")
    with pytest.raises(UserError, match="not found"):
        synthetic.proof_check(_synthetic().proof_scales, tmp_path, tmp_path / "p.csv")


def test_every_seed_is_a_run_and_the_proof_reads_the_first(tmp_path, monkeypatch):
    """synthetic.seeds: one run folder per (variance, tokens, n, seed); the loss table gains the
    seed column; the proof check reads the n = 1 run of the first seed; final losses average the
    seeds' own final losses."""
    from softmoe.study import layout, stats
    from softmoe.workflow import tables
    from softmoe.experiments import e1_theorem
    from softmoe.study.params import load_study
    study = load_study(ROOT / "params.yaml")
    study = dataclasses.replace(study, synthetic=study.synthetic.replaced(
        experts=[1, 2], tokenizations=["5x2"], variances=[5], seeds=[3, 1], batch_size=200, steps=10, lr=0.01))
    runs = layout.synthetic_runs(study.synthetic)
    assert [(r["n"], r["seed"]) for r in runs] == [(1, 3), (1, 1), (2, 3), (2, 1)]
    assert layout.proof_run(study.synthetic).format(variance=5, tokens="5x2") == "results/synthetic/v5/5x2/n1-s3"
    assert e1_theorem.proof_runs(study) == [{"variance": 5, "tokens": "5x2"}]
    monkeypatch.chdir(tmp_path)
    for r in runs:
        synthetic.train_synthetic(study.synthetic, "auto", 5.0, "5x2", r["n"], r["seed"],
                                  Path(layout.SYNTHETIC.format(**r)))
    tables.concat(study, e1_theorem.SYNTHETIC_LOSS.name, tmp_path / "synthetic_loss.csv")
    loss = tables.read(tmp_path, e1_theorem.SYNTHETIC_LOSS.name)
    assert sorted(set(zip(loss["n"], loss["seed"]))) == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert len(loss) == 4 * 10
    finals = stats.final_losses(loss)
    one = [stats.final_loss(loss[(loss["n"] == 1) & (loss["seed"] == s)].sort_values("step")["loss"]) for s in (1, 3)]
    assert finals.loc[finals["n"] == 1, "final_loss"].item() == pytest.approx(sum(one) / 2, rel=1e-12)
    assert one[0] != one[1]
