"""The study's models: budgets, parameter counts, exact subset logits, and the torchvision import."""
import copy
import subprocess
import sys

import pytest
import torch

from softmoe.base.errors import UserError
from softmoe.model.layer import SoftMoE
from softmoe.model.modelfile import build_model
from softmoe.model.models import (MnistSoftMoE, NormRegressor, SoftMoEViT, count_parameters,
                            expert_hidden)
from softmoe.study.params import Model
from softmoe.model.selection import random_experts, select_experts

MNIST_GRID = [2, 4, 8, 16, 32, 64, 128, 256, 512]


def test_expert_hidden():
    assert [expert_hidden(784, n) for n in (1, 2, 16, 100, 512, 784)] == [784, 392, 49, 7, 1, 1]
    with pytest.raises(UserError, match="experts"):
        expert_hidden(784, 785)


@pytest.mark.parametrize("n", MNIST_GRID)
def test_mnist_parameter_counts(n):
    counts = count_parameters(MnistSoftMoE(n))
    assert counts["experts"] == 2 * 196 * (784 // n) * n
    assert counts["total"] == 2 * 196 * (784 // n) * n + 196 * n + 1 + 7840


def test_mnist_n16_is_the_papers_size():
    assert count_parameters(MnistSoftMoE(16)) == {"total": 318_305, "experts": 307_328}


def test_mnist_architecture():
    model = MnistSoftMoE(8)
    moe = model.moe
    assert (moe.dim, moe.num_experts, moe.expert_hidden, moe.slots_per_expert) == (196, 8, 98, 1)
    assert moe.normalize and moe.b1 is None and moe.activation == "relu"
    assert moe.phi.abs().max() <= 1 and moe.phi.min() < -0.9 and moe.phi.max() > 0.9
    assert model.head.bias is None and tuple(model.head.weight.shape) == (10, 784)


def test_mnist_tokens_are_quadrants():
    image = torch.arange(784.0).view(1, 1, 28, 28)
    tokens = MnistSoftMoE.tokens(image)
    quadrants = [image[0, 0, :14, :14], image[0, 0, :14, 14:], image[0, 0, 14:, :14], image[0, 0, 14:, 14:]]
    assert tokens.shape == (1, 4, 196)
    for t, quadrant in enumerate(quadrants):
        assert torch.equal(tokens[0, t], quadrant.flatten())
    assert torch.equal(MnistSoftMoE.tokens(image[:, 0]), tokens)
    with pytest.raises(ValueError, match="28x28"):
        MnistSoftMoE.tokens(torch.zeros(2, 3, 28, 28))


@pytest.mark.parametrize("n", [4, 64])          # the slot and the token form of the full path
def test_mnist_forward_with_k(n):
    torch.manual_seed(0)
    model = MnistSoftMoE(n).double()
    images = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    logits = model(images)
    assert logits.shape == (6, 10)
    keep = select_experts(model.moe.routing(model.tokens(images))[1], n // 4)
    torch.testing.assert_close(model(images, k=n // 4), model(images, keep=keep))
    torch.testing.assert_close(model(images, k=n // 4, renormalize=True),
                               model(images, keep=keep, renormalize=True))
    torch.testing.assert_close(model(images, k=n), logits)


@pytest.mark.parametrize("n", [4, 64])
def test_logit_contributions_give_every_subset(n):
    torch.manual_seed(1)
    model = MnistSoftMoE(n).double()
    images = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        contributions, mass = model.logit_contributions(images)
        assert contributions.shape == (5, n, 4, 10) and mass.shape == (5, 4, n)
        torch.testing.assert_close(contributions.sum(dim=(1, 2)), model(images))
        for k, seed in [(1, 0), (n // 4, 1), (n - 1, 2)]:
            keep = random_experts(5, n, k, seed)
            kept = torch.zeros(5, n, dtype=torch.float64).scatter(1, keep, 1.0)
            per_token = torch.einsum("bntc,bn->btc", contributions, kept)
            torch.testing.assert_close(per_token.sum(dim=1), model(images, keep=keep))
            kept_mass = torch.einsum("btn,bn->bt", mass, kept).unsqueeze(-1)
            torch.testing.assert_close((per_token / kept_mass).sum(dim=1),
                                       model(images, keep=keep, renormalize=True))


def test_mnist_trains_at_both_ends_of_the_grid():
    """A few Adam steps lower the loss for n=2 and n=512 (gradients reach every parameter)."""
    torch.manual_seed(0)
    images, labels = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    for n in (2, 512):
        model = MnistSoftMoE(n)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(10):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]


@pytest.mark.parametrize("tokens,dim", [(5, 2), (2, 5)])
@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_norm_regressor(tokens, dim, n):
    model = NormRegressor(tokens, dim, n)
    assert count_parameters(model)["experts"] == 20 * dim * dim
    assert not model.moe.normalize and model.moe.scale is None and model.moe.b1 is None
    x = torch.randn(7, 10)
    y = model(x)
    assert y.shape == (7,)
    torch.testing.assert_close(y, model.moe(x.view(7, tokens, dim)).sum(dim=(1, 2)))
    assert torch.equal(x.view(7, tokens, dim)[:, 0], x[:, :dim])        # tokens in order


def test_norm_regressor_rejects_bad_split():
    with pytest.raises(ValueError, match="10"):
        NormRegressor(3, 3, 1)


def assert_paper_counts(build, n: int, layers: int, experts: float, total: float,
                        experts_tol: float = 0.01, total_tol: float = 0.01) -> None:
    """Counted on the meta device (no memory): `layers` Soft MoE layers of n experts
    768 -> floor(768*64/n) -> 768 with biases, and totals within the paper's rounding."""
    with torch.device("meta"):
        model = build()
    counts = count_parameters(model)
    hidden = 768 * 64 // n
    assert counts["experts"] == layers * n * (2 * 768 * hidden + hidden + 768)
    assert abs(counts["experts"] - experts) < experts_tol * experts
    assert abs(counts["total"] - total) < total_tol * total
    assert next(model.parameters()).device.type == "meta"


@pytest.mark.parametrize("n", [8, 16, 64, 128])
def test_vit_b16_counts_on_meta_device(n):
    """ViT-B/16, 224 px, 1000 classes: about 513M parameters, about 454M in experts (docs/study.md §3)."""
    assert_paper_counts(lambda: SoftMoEViT(224, 16, 1000, n), n, layers=6, experts=454e6, total=513e6)


def test_small_vit_forward_and_layout():
    torch.manual_seed(0)
    model = SoftMoEViT(32, 8, 10, 4, embed_dim=32, depth=3, num_heads=2, moe_blocks=2, expert_mult=4)
    moes = [block.mlp.moe for block in model.vit.blocks if hasattr(block.mlp, "moe")]
    assert len(moes) == 2 and not hasattr(model.vit.blocks[0].mlp, "moe")
    for moe in moes:
        assert moe.activation == "gelu" and moe.b1 is not None and moe.normalize
        assert moe.expert_hidden == 32 * 4 // 4
    images = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        full = model(images)
        assert full.shape == (3, 10)
        torch.testing.assert_close(model(images, k=4), full)
        assert not torch.allclose(model(images, k=1), full)
        assert not torch.allclose(model(images, k=1, renormalize=True), model(images, k=1))
    assert all(layer.k is None for layer in model.moe_layers())   # k does not leak into later calls


def test_vit_keep_applies_in_every_moe_layer():
    """model(x, keep=...) equals, input by input, the model whose dropped experts output zero
    (w2 = b2 = 0) in every Soft MoE layer, run on all experts."""
    torch.manual_seed(0)
    model = SoftMoEViT(32, 8, 10, 4, embed_dim=32, depth=3, num_heads=2, moe_blocks=2,
                       expert_mult=4).double().eval()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    keep = random_experts(3, 4, 2, seed=5)
    with torch.no_grad():
        got = model(images, keep=keep)
        assert not torch.allclose(model(images, keep=keep, renormalize=True), got)
        for i in range(3):
            zeroed = copy.deepcopy(model)
            dropped = [j for j in range(4) if j not in keep[i].tolist()]
            for layer in zeroed.moe_layers():
                layer.moe.w2[dropped] = 0.0
                layer.moe.b2[dropped] = 0.0
            torch.testing.assert_close(got[i], zeroed(images[i:i + 1])[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model(images, keep=torch.arange(4).repeat(3, 1)), model(images))
        with pytest.raises(ValueError, match="either keep or k"):
            model(images, k=1, keep=keep)
    assert all(layer.keep is None for layer in model.moe_layers())   # keep does not leak either


def test_build_model():
    mnist = build_model(Model.of({"kind": "mnist"}), 16, 10)
    assert isinstance(mnist, MnistSoftMoE) and count_parameters(mnist)["total"] == 318_305
    model = Model.of({"kind": "vit", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
                      "num_heads": 2, "moe_blocks": 1, "expert_mult": 8})
    vit = build_model(model, 4, 100, dropout=0.1)
    assert isinstance(vit, SoftMoEViT) and vit.vit.head.out_features == 100
    assert vit.num_experts == 4                    # evaluate.selection_table reads it
    assert vit.vit.head_drop.p == 0.1
    assert sum(isinstance(m, SoftMoE) for m in vit.modules()) == 1
    with pytest.raises(UserError, match="model.kind"):
        build_model(Model.of({"kind": "resnet"}), 4, 10)


def test_import_torchvision_in_a_fresh_process():
    """torchvision and timm import (with the stand-ins when torchvision's C ops cannot load)."""
    code = (
        "import sys\n"
        "from softmoe.base.vision import import_torchvision, _extension_loads\n"
        "tv = import_torchvision()\n"
        "assert import_torchvision() is tv\n"
        "import timm, torchvision.transforms as T, torchvision.datasets\n"
        "x = T.Normalize([0.5], [0.5])(__import__('torch').ones(1, 2, 2))\n"
        "assert float(x.max()) == 1.0\n"
        "stand_in = not hasattr(sys.modules['torchvision._meta_registrations'], 'register_meta')\n"
        "print(_extension_loads(), stand_in)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loads, stand_in = done.stdout.split()
    assert stand_in == str(loads == "False")                          # stand-ins only when needed
