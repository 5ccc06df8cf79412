"""The static keep paths (no host sync: grouped GEMM, gathered weights) against the per-expert
loop and the float64 plain loop of test_layer, their choice, and torch.compile(fullgraph=True)."""
import pytest
import torch
from test_layer import assert_dropped_not_executed, make, reference

from softmoe.model.layer import SoftMoE
from softmoe.model.selection import random_experts, select_experts


def force(monkeypatch, backend: str) -> None:
    monkeypatch.setattr(SoftMoE, "keep_backend", lambda self, x, k: backend)


def run(layer, x, mode, keep):
    if mode == "k":
        return layer(x, k=keep.shape[1])
    return layer(x, keep=keep, renormalize=mode == "keep-renormalized")


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("p", [1, 3])
@pytest.mark.parametrize("bias,activation", [(False, "relu"), (True, "gelu")])
@pytest.mark.parametrize("mode", ["keep", "keep-renormalized", "k"])
def test_gathered_equals_the_loop_and_the_float64_reference(monkeypatch, normalize, p, bias, activation, mode):
    layer = make(n=5, p=p, normalize=normalize, bias=bias, activation=activation)
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    keep = random_experts(3, 5, 2, seed=1)
    if mode == "k":
        want = reference(layer, x, select_experts(layer.routing(x)[1], 2, p))
    else:
        want = reference(layer, x, keep, mode == "keep-renormalized")
    force(monkeypatch, "loop")
    loop = run(layer, x, mode, keep)
    force(monkeypatch, "gathered")
    got = run(layer, x, mode, keep)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, loop, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("p,bias,activation", [(1, True, "gelu"), (2, False, "relu")])
@pytest.mark.parametrize("mode", ["keep", "keep-renormalized", "k"])
def test_grouped_mm_equals_the_loop_and_the_float64_reference(monkeypatch, p, bias, activation, mode):
    """torch._grouped_mm takes bf16 (rows of 16 bytes): bf16 tolerances, every expert count seen
    (experts kept by several inputs, by one, by none)."""
    layer = make(n=6, p=p, dim=16, hidden=24, bias=bias, activation=activation)
    x = torch.randn(5, 9, 16, dtype=torch.float64)
    keep = torch.tensor([[0, 3], [3, 5], [5, 0], [3, 1], [0, 5]])          # expert 2 and 4 idle
    half = make(n=6, p=p, dim=16, hidden=24, bias=bias, activation=activation).to(torch.bfloat16)
    with torch.no_grad():
        chosen = select_experts(half.routing(x.to(torch.bfloat16))[1], 2, p)  # bf16 routing's choice
    want = reference(layer, x, chosen if mode == "k" else keep, mode == "keep-renormalized").detach()
    layer, x = half, x.to(torch.bfloat16)
    force(monkeypatch, "loop")
    loop = run(layer, x, mode, keep)
    force(monkeypatch, "grouped_mm")
    got = run(layer, x, mode, keep).detach()
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, loop, rtol=2e-2, atol=2e-2)
    assert float((got.double() - want).norm() / want.norm()) < 2e-2


@pytest.mark.parametrize("backend,dtype", [("gathered", torch.float64), ("grouped_mm", torch.bfloat16)])
def test_static_paths_do_not_execute_dropped_experts(monkeypatch, backend, dtype):
    layer = make(n=6, p=2, dim=16, hidden=24, bias=True).to(dtype)
    force(monkeypatch, backend)
    assert_dropped_not_executed(layer, torch.randn(3, 4, 16, dtype=dtype), rtol=0, atol=0)


def test_backend_choice_on_the_cpu(monkeypatch):
    """Eager CPU: the loop (a host sync costs nothing there); token side: masked; under
    torch.compile: grouped GEMM for aligned bf16, gathered weights otherwise."""
    wide, tiny = make(n=6, dim=16, hidden=24), make(n=64, dim=196, hidden=12)
    x, tokens = torch.randn(4, 5, 16), torch.randn(2, 4, 196)
    assert wide.keep_backend(x, 2) == "loop" and tiny.keep_backend(tokens, 16) == "masked"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert wide.keep_backend(x, 2) == "gathered"
    assert wide.keep_backend(x.bfloat16(), 2) == "grouped_mm"
    assert make(n=6, dim=6, hidden=24).keep_backend(torch.randn(4, 5, 6).bfloat16(), 2) == "gathered"
    assert tiny.keep_backend(tokens, 16) == "masked"


@pytest.mark.parametrize("dtype,backend", [(torch.float32, "gathered"), (torch.bfloat16, "grouped_mm")])
def test_keep_path_compiles_as_one_graph_and_equals_eager(monkeypatch, dtype, backend):
    """torch.compile(fullgraph=True) refuses any graph break, so nothing data-dependent reaches
    the host (Algorithm 1, the sort, the offsets, the grouped matmuls). The aot_eager backend
    traces like inductor (dynamo, then AOT autograd on fake tensors) without a C++ build."""
    torch.manual_seed(0)
    layer = SoftMoE(16, 6, 24, slots_per_expert=2, bias=True, activation="gelu").eval().to(dtype)
    x = torch.randn(5, 7, 16, dtype=dtype)
    keep = random_experts(5, 6, 3, seed=0)
    chosen, choose = [], SoftMoE.keep_backend
    monkeypatch.setattr(SoftMoE, "keep_backend", lambda self, x, k: chosen.append(choose(self, x, k)) or chosen[-1])
    torch._dynamo.reset()
    by_k = torch.compile(lambda x: layer(x, k=2), fullgraph=True, backend="aot_eager")
    by_keep = torch.compile(lambda x, keep: layer(x, keep=keep, renormalize=True), fullgraph=True,
                            backend="aot_eager")
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    with torch.inference_mode():
        got_k, got_keep = by_k(x), by_keep(x, keep)
        assert chosen == [backend, backend]                         # the static path was traced
        torch.testing.assert_close(got_k, layer(x, k=2), **tol)
        torch.testing.assert_close(got_keep, layer(x, keep=keep, renormalize=True), **tol)
    assert chosen[2:] == ["loop", "loop"]                           # eager CPU: the loop
    torch._dynamo.reset()
