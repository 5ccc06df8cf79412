"""The Soft MoE Astroformer-1 (docs/astroformer.md): the paper's parameter counts on the meta
device, the layout of its transformer stage, Algorithm 1 in every Soft MoE layer, the params
checks, and a width-reduced model through prepare -> train -> evaluate from CIFAR's own files."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from softmoe.data import datasets
from softmoe.model import modelfile
from softmoe.steps import evaluate, train
from softmoe.study import params as P
from softmoe.model.astroformer import SoftMoEAstroformer, SoftMoETransformerBlock
from softmoe.base.errors import UserError
from softmoe.model.layer import SoftMoE
from softmoe.model.modelfile import build_model
from softmoe.model.selection import random_experts, select_experts
from test_data import _write_cifar_like
from test_models import assert_paper_counts

ROOT = Path(__file__).resolve().parents[1]
CIFAR_GRIDS = sorted({2, 4, 8, 16, 32, 64, 128} | {2, 8, 16, 64, 128})   # config/cifar{10,100}.yaml
# Width-reduced Astroformer: 3 stages (C-C-T), 48 px -> 3x3 = 9 tokens of 32 in the MoE stage.
TINY = {"kind": "astroformer", "embed_dims": [8, 16, 32], "depths": [1, 1, 2], "stem_width": 8,
        "head_hidden": 32, "img_size": 48, "expert_mult": 2}


def tiny(n: int = 4, num_classes: int = 10) -> SoftMoEAstroformer:
    return build_model(P.Model.of(TINY), n, num_classes, dropout=0.1)


@pytest.mark.parametrize("n", CIFAR_GRIDS)
def test_astroformer1_counts_on_meta_device(n):
    """Astroformer-1, 96 px: about 180M parameters, 151.1M in experts (docs/study.md §3)."""
    assert_paper_counts(lambda: SoftMoEAstroformer(num_classes=100, num_experts=n), n, layers=2,
                        experts=151.1e6, total=180e6, experts_tol=0.002)


def test_astroformer1_layout():
    """C-C-C-T stages of timm's MaxxVit; the 2 transformer blocks hold Soft MoE layers on 9 tokens."""
    with torch.device("meta"):
        model = SoftMoEAstroformer(num_classes=10, num_experts=16)
    net = model.net
    assert [len(stage.blocks) for stage in net.stages] == [2, 6, 14, 2]
    assert [type(b).__name__ for stage in net.stages[:3] for b in stage.blocks] == ["MbConvBlock"] * 22
    blocks = list(net.stages[3].blocks)
    assert all(isinstance(b, SoftMoETransformerBlock) and not hasattr(b.block, "mlp") for b in blocks)
    assert type(blocks[0].block).__name__ == "TransformerBlock2d"
    assert net.stem.conv1.out_channels == 64 and net.head.pre_logits.fc.out_features == 768
    for block in blocks:
        moe = block.mlp.moe
        assert (moe.dim, moe.num_experts, moe.expert_hidden) == (768, 16, 3072)
        assert moe.normalize and moe.b1 is not None and moe.activation == "gelu"
    tokens = []
    hook = blocks[0].mlp.moe.register_forward_pre_hook(lambda _, args: tokens.append(args[0].shape))
    model(torch.empty(2, 3, 96, 96, device="meta"))
    hook.remove()
    assert tuple(tokens[0]) == (2, 9, 768)


def test_no_residual_around_the_moe():
    """A block's output is the Soft MoE's output alone: zero expert outputs give a zero block output
    (a residual around it would pass the attention output through)."""
    torch.manual_seed(0)
    block = tiny().eval().net.stages[-1].blocks[1]
    x = torch.randn(2, 32, 3, 3)
    with torch.no_grad():
        assert block(x).abs().sum() > 0
        block.mlp.moe.w2.zero_()
        block.mlp.moe.b2.zero_()
        assert torch.equal(block(x), torch.zeros_like(x))


def test_algorithm1_runs_in_every_moe_layer_on_its_own_input():
    """model(x, k=k): each Soft MoE layer keeps, per input, the k experts with the largest combine
    weight summed over its own tokens; model(x, keep=...) keeps those experts in every layer."""
    torch.manual_seed(0)
    model = tiny(n=8).double().eval()
    x = torch.randn(3, 3, 48, 48, dtype=torch.float64)
    seen = []

    def check(moe, args, output):
        keep = select_experts(moe.routing(args[0])[1], 3)
        torch.testing.assert_close(output, moe.forward(args[0], keep=keep))   # forward: no hooks
        seen.append(moe)

    layers = [m for m in model.modules() if isinstance(m, SoftMoE)]
    hooks = [layer.register_forward_hook(check) for layer in layers]
    with torch.no_grad():
        selected = model(x, k=3)
        for hook in hooks:
            hook.remove()
        assert seen == layers and len(layers) == 2
        full = model(x)
        assert not torch.allclose(selected, full)
        torch.testing.assert_close(model(x, k=8), full)
        keep = random_experts(3, 8, 8, seed=0)
        torch.testing.assert_close(model(x, keep=keep), full)
        assert not torch.allclose(model(x, keep=keep[:, :2]), full)
    assert all(layer.k is None and layer.keep is None for layer in model.moe_layers())


BAD_MODELS = [
    ({"depths": [1, 2]}, ["model.embed_dims", "model.depths", "one width per stage"]),
    ({"embed_dims": [8, 16, 40]}, ["model.embed_dims", "multiple of the attention head width 32"]),
    ({"img_size": 40}, ["model.img_size", "multiple of 16"]),
    ({"stem_width": 0}, ["model.stem_width"]),
    ({"embed_dims": []}, ["model.embed_dims"]),
    ({"expert_mult": 1}, ["experts", "zero width", "use n <= 32"]),
]


@pytest.mark.parametrize("change,words", BAD_MODELS, ids=[str(c) for c, _ in BAD_MODELS])
def test_bad_astroformer_params_name_the_key(change, words):
    params = P.load(ROOT / "params.yaml", [ROOT / "config/cifar100.yaml"])
    P.validate(params)
    params["model"] = {**TINY, **change}
    with pytest.raises(P.ParamsError) as err:
        P.validate(params)
    message = str(err.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_cifar_configs_are_the_papers_recipe():
    # the paper's grids plus the single-expert control n = 1 at the same budget (issue 21)
    for name, grid in (("cifar10", [1, 2, 4, 8, 16, 32, 64, 128]), ("cifar100", [1, 2, 8, 16, 64, 128])):
        params = P.load(ROOT / "params.yaml", [ROOT / f"config/{name}.yaml"])
        P.validate(params)
        t = params["train"]
        assert params["experts"] == grid and params["model"]["kind"] == "astroformer"
        assert P.Model.of(params["model"]).options() == P.Model.of({"kind": "astroformer"}).options()
        assert (t["optimizer"], t["batch_size"], t["epochs"], t["schedule"], t["warmup_epochs"]) == \
            ("adamw", 800, 500, "cosine", 5)
        assert (t["mixup"], t["label_smoothing"], t["dropout"]) == (0.8, 0.1, 0.1)
        assert t["lr"] == pytest.approx(3e-4 * (800 / 256) ** 0.5, rel=1e-4)
    cifar10 = P.Evaluate.of(P.load(ROOT / "params.yaml", [ROOT / "config/cifar10.yaml"])["evaluate"])
    ks = {n: cifar10.k_values(n) for n in (2, 128)}
    assert ks[2] == [1] and {1, 2, 3, 4, 5} <= set(ks[128])
    cifar100 = P.Evaluate.of(P.load(ROOT / "params.yaml", [ROOT / "config/cifar100.yaml"])["evaluate"])
    assert cifar100.k_values(128) == [16, 32, 64] and cifar100.absolute_k == ()


@pytest.fixture
def cifar_params(tmp_path, monkeypatch) -> dict:
    """A width-reduced Astroformer study on 20 + 4 images written in CIFAR-10's own format."""
    written = _write_cifar_like(tmp_path / "raw", "cifar10", np.random.default_rng(0), monkeypatch)
    p = P.load(ROOT / "params.yaml", [ROOT / "config/cifar10.yaml"])
    p["datasets"]["cifar10"] = {"source": "torchvision", "root": str(tmp_path / "raw"), "download": False}
    p["experts"], p["model"] = [4], copy.deepcopy(TINY)
    p["train"].update(batch_size=4, max_steps=6, accelerator="cpu", precision="32-true", num_workers=0)
    p["evaluate"].update(absolute_k=[1, 2], batch_size=3)
    P.validate(p)
    assert len(written["train"][1]) == 20 and len(written["test"][1]) == 4
    return p


def test_tiny_astroformer_prepare_train_evaluate(cifar_params, tmp_path):
    p = P.Study.of(cifar_params)
    prepared, run = tmp_path / "data" / "cifar10", tmp_path / "run"
    datasets.prepare(p.datasets, "cifar10", prepared)
    metrics = train.train_run(p.train, p.model, p.dataset_entry, prepared, 4, 0, run)
    assert metrics["steps"] == 6 and np.isfinite(metrics["test_loss"]) and metrics["expert_hidden"] == 16
    assert metrics["params_experts"] == 2 * 4 * (2 * 32 * 16 + 16 + 32)
    meta = modelfile.run_metadata(run)
    assert (meta["kind"], meta["img_size"], meta["n"]) == ("astroformer", "48", "4")
    model = modelfile.load_trained(run, p.model, expect={"dataset": "cifar10", "n": 4})
    assert isinstance(model, SoftMoEAstroformer) and not model.training

    evaluate.evaluate_run(p.evaluate, p.train, p.model, p.dataset_entry, prepared, run, tmp_path / "selection.csv")
    table = pd.read_csv(tmp_path / "selection.csv")
    for r in (False, True):
        rows = table[table.renormalize == r]
        assert sorted(rows[rows.method == "alg1"].k) == [1, 2]            # absolute k = 1, 2 of n = 4
        assert sorted(rows[rows.method == "random"].k) == [1, 2]
        assert rows[rows.method == "all"].accuracy.item() == pytest.approx(metrics["test_accuracy"])
    assert "oracle" not in set(table.method)                              # generic path: no oracle
    images, labels = datasets.load_split(prepared, "test", p.dataset_entry)
    with torch.no_grad():                                                 # Algorithm 1 in every layer
        hits = (model(datasets.model_inputs(images, p.train, p.model), k=1).argmax(1) == labels).float().mean().item()
    alg1 = table[(table.method == "alg1") & (table.k == 1) & (~table.renormalize)]
    assert alg1.accuracy.item() == pytest.approx(hits)
    wider = P.Model.of({**TINY, "embed_dims": [8, 16, 64]})              # a model of other params
    with pytest.raises(UserError, match="weights do not fit the model of params.yaml"):
        modelfile.load_trained(run, wider)
    with pytest.raises(UserError, match="img_size='48' \\(expected '64'\\)"):
        modelfile.load_trained(run, P.Model.of({**TINY, "img_size": 64}))
