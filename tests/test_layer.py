"""The Soft MoE layer against a per-input, per-expert loop written from docs/study.md §2."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from softmoe.model.layer import SoftMoE, reference_forward
from softmoe.model.selection import random_experts, select_experts

ACT = {"relu": torch.relu, "gelu": torch.nn.functional.gelu}


def reference(layer: SoftMoE, x: torch.Tensor, keep=None, renormalize=False) -> torch.Tensor:
    """Y = C Ỹ for each input separately, one expert and one slot at a time."""
    n, p = layer.num_experts, layer.slots_per_expert
    outputs = []
    for i, tokens in enumerate(x):
        phi = layer.phi
        if layer.normalize:
            tokens = tokens / tokens.norm(dim=1, keepdim=True)
            phi = phi / phi.norm(dim=0, keepdim=True) * layer.scale
        e = torch.exp(tokens @ phi)                                       # (m, s)
        dispatch = e / e.sum(dim=0, keepdim=True)
        slots = dispatch.T @ tokens                                       # (s, d)
        kept = range(n) if keep is None else keep[i].tolist()
        y_slots = torch.zeros_like(slots)
        for j in kept:
            for q in range(p):
                z = slots[j * p + q] @ layer.w1[j]
                z = ACT[layer.activation](z if layer.b1 is None else z + layer.b1[j])
                z = z @ layer.w2[j]
                y_slots[j * p + q] = z if layer.b2 is None else z + layer.b2[j]
        if renormalize and keep is not None:
            mask = torch.zeros(n * p, dtype=x.dtype)
            for j in kept:
                mask[j * p:(j + 1) * p] = 1.0
            e = e * mask
        outputs.append(e / e.sum(dim=1, keepdim=True) @ y_slots)
    return torch.stack(outputs)


def make(n=4, p=1, dim=6, hidden=5, seed=0, **kw) -> SoftMoE:
    torch.manual_seed(seed)
    return SoftMoE(dim, n, hidden, slots_per_expert=p, **kw).double()


@pytest.fixture(params=["slots", "tokens"])
def form(request, monkeypatch):
    """Run the test once with each exact form of the full path."""
    monkeypatch.setattr(SoftMoE, "token_side", lambda self, m: request.param == "tokens")
    return request.param


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("p", [1, 3])
@pytest.mark.parametrize("bias,activation", [(False, "relu"), (True, "gelu"), (True, "relu")])
@pytest.mark.parametrize("mode", ["all", "keep", "keep-renormalized"])
def test_layer_matches_reference(form, normalize, p, bias, activation, mode):
    layer = make(n=5, p=p, normalize=normalize, bias=bias, activation=activation)
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    keep = None if mode == "all" else random_experts(3, 5, 2, seed=1)
    renormalize = mode == "keep-renormalized"
    got = layer(x, keep=keep, renormalize=renormalize)
    want = reference(layer, x, keep, renormalize)
    assert got.shape == (3, 7, 6)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("mode", ["all", "keep", "keep-renormalized"])
def test_the_modules_reference_forward_is_the_plain_loop(normalize, p, mode):
    """layer.reference_forward (the equations at the top of layer.py) = this file's per-input loop."""
    layer = make(n=4, p=p, normalize=normalize, bias=True, activation="gelu")
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    keep = None if mode == "all" else random_experts(3, 4, 2, seed=2)
    renormalize = mode == "keep-renormalized"
    want = reference(layer, x, keep, renormalize)
    torch.testing.assert_close(reference_forward(layer, x, keep, renormalize), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer(x, keep=keep, renormalize=renormalize), want, rtol=1e-10, atol=1e-12)


def test_slot_outputs_and_hidden_match_reference(form):
    layer = make(n=3, p=2, bias=True)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    combine, outputs = layer.slot_outputs(x)
    torch.testing.assert_close(combine @ outputs, reference(layer, x))
    # any subset S from the same pieces: C[:, :, S] Ỹ[S] is the keep path without renormalization
    keep = torch.tensor([[0, 2], [1, 2]])
    kept_slots = torch.stack([torch.cat([torch.arange(j * 2, j * 2 + 2) for j in row]) for row in keep])
    subset = torch.stack([combine[i][:, kept_slots[i]] @ outputs[i][kept_slots[i]] for i in range(2)])
    torch.testing.assert_close(subset, reference(layer, x, keep))
    _, hidden = layer.slot_hidden(x)
    assert hidden.shape == (2, 3, 2, 5)


def test_routing_axes_and_values():
    layer = make(n=4, p=2)
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    dispatch, combine = layer.routing(x)
    assert dispatch.shape == combine.shape == (3, 5, 8)
    torch.testing.assert_close(dispatch.sum(dim=1), torch.ones(3, 8, dtype=torch.float64))
    torch.testing.assert_close(combine.sum(dim=2), torch.ones(3, 5, dtype=torch.float64))
    tokens = x / x.norm(dim=2, keepdim=True)
    logits = tokens @ (layer.phi / layer.phi.norm(dim=0) * layer.scale)
    torch.testing.assert_close(dispatch, logits.softmax(dim=1))
    torch.testing.assert_close(combine, logits.softmax(dim=2))


def test_normalized_routing_ignores_token_scale():
    """The normalized tokens are dispatched: scaling a token changes neither routing nor output."""
    layer = make(n=3)
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    scaled = x * torch.tensor([1.0, 5.0, 0.1, 3.0], dtype=torch.float64).view(1, 4, 1)
    torch.testing.assert_close(layer(scaled), layer(x))
    raw = make(n=3, normalize=False)
    assert not torch.allclose(raw(scaled), raw(x))


def test_single_expert_outputs_equal_tokens(form):
    layer = make(n=1)
    y = layer(torch.randn(4, 9, 6, dtype=torch.float64))
    torch.testing.assert_close(y, y[:, :1].expand_as(y))
    _, combine = layer.routing(torch.randn(2, 9, 6, dtype=torch.float64))
    torch.testing.assert_close(combine, torch.ones_like(combine))


def test_parameters_shapes_and_init():
    layer = SoftMoE(16, 4, 8, slots_per_expert=2, bias=True)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {"phi": (16, 8), "scale": (), "w1": (4, 16, 8), "w2": (4, 8, 16),
                      "b1": (4, 8), "b2": (4, 16)}
    assert layer.scale.item() == 1.0
    assert layer.phi.abs().max() <= 1.0 and layer.phi.abs().max() > 0.5
    assert layer.w1.abs().max() <= 1 / math.sqrt(16) and layer.w2.abs().max() <= 1 / math.sqrt(8)
    plain = SoftMoE(16, 4, 8)
    assert plain.b1 is None and plain.b2 is None and plain.scale is not None
    assert SoftMoE(16, 4, 8, normalize=False).scale is None
    torch.manual_seed(0)
    lecun = SoftMoE(400, 64, 2, phi_init="lecun")
    assert abs(lecun.phi.std().item() - 1 / math.sqrt(400)) < 0.002
    with pytest.raises(ValueError, match="activation"):
        SoftMoE(4, 2, 2, activation="tanh")
    with pytest.raises(ValueError, match="phi_init"):
        SoftMoE(4, 2, 2, phi_init="zeros")


def test_k_is_algorithm_1_and_keep_all_is_full(form):
    layer = make(n=6, p=2)
    x = torch.randn(4, 5, 6, dtype=torch.float64)
    keep = select_experts(layer.routing(x)[1], 2, slots_per_expert=2)
    torch.testing.assert_close(layer(x, k=2), layer(x, keep=keep))
    everyone = torch.arange(6).repeat(4, 1)
    torch.testing.assert_close(layer(x, keep=everyone), layer(x))
    torch.testing.assert_close(layer(x, keep=everyone, renormalize=True), layer(x))


def test_renormalize_default_and_per_call():
    layer = make(n=5)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    keep = random_experts(3, 5, 2, seed=0)
    plain, renormalized = layer(x, keep=keep), layer(x, keep=keep, renormalize=True)
    assert not torch.allclose(plain, renormalized)
    layer.renormalize = True
    torch.testing.assert_close(layer(x, keep=keep), renormalized)
    torch.testing.assert_close(layer(x, keep=keep, renormalize=False), plain)


DROP_KEEP = torch.tensor([[0, 3], [3, 5], [5, 0]])    # of 6 experts: 1, 2 and 4 are never kept


def assert_dropped_not_executed(layer: SoftMoE, x: torch.Tensor, **close) -> None:
    """Dropped experts' weights are NaN: any use of them (even times zero) would show."""
    want = layer(x, keep=DROP_KEEP)
    with torch.no_grad():
        for j in (1, 2, 4):
            for weight in (layer.w1, layer.w2, layer.b1, layer.b2):
                weight[j] = float("nan")
    got = layer(x, keep=DROP_KEEP)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, **close)


def test_dropped_experts_are_not_executed():
    layer = make(n=6, p=2, bias=True)
    assert not layer.token_side(4)                  # the wide-expert regime: Algorithm 2
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    assert_dropped_not_executed(layer, x)
    assert torch.isnan(layer(x)).all()


@pytest.mark.parametrize("k", [1, 2, 4])
def test_keep_flops_scale_with_k(k):
    """Matmul FLOPs of the keep path, term by term: only kept slots are filled, run and combined."""
    b, m, d, n, p, h = 3, 5, 6, 8, 2, 7
    layer = make(n=n, p=p, dim=d, hidden=h)
    assert not layer.token_side(m)                  # the wide-expert regime: Algorithm 2
    x = torch.randn(b, m, d, dtype=torch.float64)
    counter = FlopCounterMode(display=False)
    with counter:
        layer(x, keep=random_experts(b, n, k, seed=0))
    logits = 2 * b * m * d * n * p
    dispatch = combine = 2 * b * k * p * m * d
    experts = 2 * b * k * p * (d * h + h * d)
    assert counter.get_total_flops() == logits + dispatch + experts + combine


def test_many_tiny_experts_keep_path_is_dense_and_exact():
    """Token-side regime (MNIST n=64): the kept experts' output comes from the dense form with the
    dropped experts masked out of C, so its FLOPs do not fall with k; the values are exact."""
    layer = make(n=64, dim=196, hidden=12, seed=2)
    assert layer.token_side(4)
    x = torch.randn(2, 4, 196, dtype=torch.float64)
    keep = random_experts(2, 64, 16, seed=3)
    for renormalize in (False, True):
        torch.testing.assert_close(layer(x, keep=keep, renormalize=renormalize),
                                   reference(layer, x, keep, renormalize), rtol=1e-10, atol=1e-12)
    flops = []
    for keep in (None, random_experts(2, 64, 1, seed=0), random_experts(2, 64, 16, seed=0)):
        counter = FlopCounterMode(display=False)
        with counter:
            layer(x, keep=keep)
        flops.append(counter.get_total_flops())
    assert flops[0] == flops[1] == flops[2]


def test_k_computes_the_combine_softmax_once_and_skips_keep_checks(form, monkeypatch):
    """Algorithm 1's own choice is valid by construction, and its combine weights are reused."""
    layer = make(n=6, p=2)
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    want = layer(x, keep=select_experts(layer.routing(x)[1], 2, slots_per_expert=2))

    def refuse(self, keep, batch):
        raise AssertionError("keep from Algorithm 1 was validated again")

    monkeypatch.setattr(SoftMoE, "_check_keep", refuse)
    softmax, over_slots = torch.Tensor.softmax, []

    def counting(self, *args, **kwargs):
        over_slots.append(kwargs.get("dim", args[0] if args else None) in (2, -1))
        return softmax(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "softmax", counting)
    torch.testing.assert_close(layer(x, k=2), want)
    assert sum(over_slots) == 1
    with pytest.raises(AssertionError, match="validated again"):
        layer(x, keep=torch.tensor([[0, 1]] * 3))


def test_gradients_flow(form):
    layer = make(n=4, bias=True)
    x = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0
    layer.zero_grad()
    layer(x, keep=torch.tensor([[1], [1], [2]])).square().sum().backward()
    assert layer.w1.grad[[0, 3]].abs().sum() == 0
    assert (layer.w1.grad[[1, 2]].flatten(1).abs().sum(dim=1) > 0).all()
    assert layer.phi.grad.abs().sum() > 0 and layer.scale.grad.abs() > 0


def test_bad_keep_rejected():
    layer = make(n=4)
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="twice"):
        layer(x, keep=torch.tensor([[1, 1], [0, 2]]))
    with pytest.raises(ValueError, match="outside"):
        layer(x, keep=torch.tensor([[1, 4], [0, 2]]))
    with pytest.raises(ValueError, match="LongTensor"):
        layer(x, keep=torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="either keep or k"):
        layer(x, keep=torch.tensor([[1], [2]]), k=1)
    with pytest.raises(ValueError, match="expected input"):
        layer(torch.randn(2, 3, 5, dtype=torch.float64))


def test_form_choice():
    """Many tiny experts (MNIST n >= 64) run on the tokens; wide experts (ViT) on the slots."""
    with torch.device("meta"):
        assert not SoftMoE(196, 2, 392).token_side(4)
        assert not SoftMoE(196, 32, 24).token_side(4)
        assert SoftMoE(196, 64, 12).token_side(4)
        assert SoftMoE(196, 512, 1).token_side(4)
        assert not SoftMoE(768, 128, 384).token_side(197)


@pytest.mark.parametrize("p", [1, 3])
def test_both_forms_give_the_same_gradients(p, monkeypatch):
    """The token form (experts innermost) and the slot form are the same function: equal outputs
    and equal gradients for every parameter and the input."""
    grads = {}
    for side in (False, True):
        monkeypatch.setattr(SoftMoE, "token_side", lambda self, m, side=side: side)
        layer = make(n=5, p=p, bias=True, activation="gelu")
        x = torch.randn(3, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2),
                        requires_grad=True)
        layer(x).sin().sum().backward()
        grads[side] = {"x": x.grad, **{name: q.grad for name, q in layer.named_parameters()}}
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_token_combine_takes_hidden_in_any_layout(monkeypatch):
    """`_combine_all` in the token form accepts hidden activations laid out (b, n, p, h) contiguously,
    not only the expert-last view that `_hidden` returns."""
    monkeypatch.setattr(SoftMoE, "token_side", lambda self, m: True)
    layer = make(n=4, p=2, bias=True)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    combine, hidden = layer.slot_hidden(x)
    torch.testing.assert_close(layer._combine_all(hidden.contiguous(), combine, token_form=True), reference(layer, x))
