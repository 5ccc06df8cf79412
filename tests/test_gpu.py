"""The CUDA paths: the layer and Algorithm 1 on the GPU against the float64 loop and the CPU,
training on the GPU (a real out-of-memory, a NaN stop, a model that evaluates the same on the
CPU), selective evaluation and latency timing on the GPU. Skipped without CUDA; run on a GPU
machine with `pytest -m gpu` (benchmarks/gpu-check.sh does)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_layer import make, reference
from test_train import _Diverging, _train

from softmoe.bench import timing
from softmoe.model import modelfile
from softmoe.steps import evaluate, latency, train
from softmoe.base.errors import UserError
from softmoe.model.layer import SoftMoE
from softmoe.study.params import Latency, Study, Wide
from softmoe.model.selection import random_experts, select_experts

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).norm() / want.norm())


@pytest.fixture
def params() -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["train"].update(max_steps=40, batch_size=512, accelerator="gpu")
    return p


@pytest.mark.parametrize("tokens_form", [False, True])
@pytest.mark.parametrize("mode", ["all", "keep", "keep-renormalized"])
def test_layer_on_cuda_matches_the_float64_loop(monkeypatch, tokens_form, mode):
    from softmoe.model.layer import SoftMoE
    monkeypatch.setattr(SoftMoE, "token_side", lambda self, m: tokens_form)
    layer = make(n=6, p=2, dim=16, hidden=24, bias=True, activation="gelu")
    x = torch.randn(5, 9, 16, dtype=torch.float64)
    keep = None if mode == "all" else random_experts(5, 6, 3, seed=2)
    renormalize = mode == "keep-renormalized"
    want = reference(layer, x, keep, renormalize)
    got = layer.float().to(CUDA)(x.float().to(CUDA), keep=None if keep is None else keep.to(CUDA),
                                 renormalize=renormalize)
    assert got.is_cuda and torch.isfinite(got).all()
    assert relative_error(got, want) < 1e-5


def test_bf16_autocast_stays_close_to_float64():
    layer = make(n=8, p=1, dim=64, hidden=128, bias=True, activation="gelu")
    x = torch.randn(4, 32, 64, dtype=torch.float64)
    want = reference(layer, x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = layer.float().to(CUDA)(x.float().to(CUDA))
    assert relative_error(got, want) < 2e-2


def test_algorithm_1_picks_the_same_experts_on_cuda_as_on_cpu():
    gen = torch.Generator().manual_seed(0)
    combine = torch.softmax(torch.randn(64, 20, 32, generator=gen), dim=-1)   # (inputs, tokens, n*p)
    combine[:8] = 1.0 / 32                                                     # ties everywhere
    for k in (1, 5, 8, 15):
        cpu = select_experts(combine, k, slots_per_expert=2)
        gpu = select_experts(combine.to(CUDA), k, slots_per_expert=2)
        assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu), k


def test_k_on_cuda_is_algorithm_1_then_the_keep_path():
    layer = make(n=8, p=1, dim=16, hidden=32).float().to(CUDA)
    x = torch.randn(6, 10, 16, device=CUDA)
    keep = select_experts(layer.routing(x)[1], 3)
    torch.testing.assert_close(layer(x, k=3), layer(x, keep=keep))


def test_real_cuda_out_of_memory_says_reduce_batch_size(params, mnist5k, tmp_path):
    """A true CUDA OOM (the process is capped at ~0.1 % of the card), not a simulated one."""
    params["train"].update(batch_size=4000, max_steps=2)
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(0.001)
    try:
        with pytest.raises(UserError, match=r"out of GPU memory with train.batch_size=4000: reduce"):
            _train(params, mnist5k, 512, 0, tmp_path)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_nan_loss_on_cuda_stops_naming_the_step(params, mnist5k, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "build_model", lambda model, n, classes, chans, dropout: _Diverging(n, classes))
    with pytest.raises(UserError, match=r"train loss became nan at step 12 .*last good checkpoint"):
        _train(params, mnist5k, 2, 0, tmp_path)


def test_a_gpu_trained_model_evaluates_the_same_on_cpu_and_cuda(params, mnist5k, tmp_path, monkeypatch):
    metrics = _train(params, mnist5k, 16, 0, tmp_path)
    assert metrics["test_accuracy"] > 0.5
    study = Study.of(params)
    model = modelfile.load_trained(tmp_path, study.model, {"n": 16})
    total, batches = evaluate._test_batches(study.evaluate.batch_size, study.train, study.model,
                                            study.dataset_entry, mnist5k)
    batches, tables = list(batches), {}
    for device in ("cpu", "cuda"):
        monkeypatch.setattr(evaluate, "DEVICE", torch.device(device))
        tables[device] = evaluate.selection_table(model, batches, total, study.evaluate)
    cpu, gpu = tables["cpu"], tables["cuda"]
    assert len(cpu) == len(gpu) > 0
    full = cpu[(cpu.method == "all")].accuracy.iloc[0]
    assert abs(full - metrics["test_accuracy"]) <= 2 / total        # trained on GPU, scored on CPU
    # Same rows; accuracies may differ only where float32 rounding flips a near-tie.
    assert (cpu[["k", "method", "renormalize"]].values == gpu[["k", "method", "renormalize"]].values).all()
    assert (cpu.accuracy - gpu.accuracy).abs().max() <= 3 / total


def test_latency_times_the_keep_path_on_cuda():
    wide = Wide.of(dict(experts=8, hidden_per_expert=512, dim=64, tokens=16, layers=2, width=1.0))
    cfg = Latency.of(dict(fractions=[1.0, 0.25], batch_sizes=[1, 8], warmup=2, repeats=5, wide=wide.raw))
    rows, _ = latency.time_config("wide", latency.wide_layers(wide), (16, 64), cfg, CUDA)
    assert {r["device"] for r in rows} == {"cuda"}
    assert {(r["config"], r["batch"], r["k"]) for r in rows} == {
        (c, b, k) for c in ("wide", "wide@bf16") for b in (1, 8) for k in (8, 2)}
    assert all(r["median_ms"] > 0 for r in rows)


def _loop(layer, x, k, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(SoftMoE, "keep_backend", lambda self, x, k: "loop")
        return layer(x, k=k)


def test_keep_backend_on_cuda():
    """fp32: gathered weights while b*k <= n, else the loop; bf16: the grouped GEMM on 9.x/10.x."""
    layer = SoftMoE(64, 8, 128, bias=True, activation="gelu").to(CUDA)
    x = torch.randn(100, 16, 64, device=CUDA)
    assert layer.keep_backend(x[:1], 2) == "gathered" and layer.keep_backend(x[:4], 2) == "gathered"
    assert layer.keep_backend(x, 2) == "loop"
    grouped = torch.cuda.get_device_capability()[0] in (9, 10)
    assert layer.keep_backend(x.bfloat16(), 2) == ("grouped_mm" if grouped else "loop")


@pytest.mark.parametrize("dtype,batch", [(torch.float32, 1), (torch.bfloat16, 1), (torch.bfloat16, 50)])
def test_static_keep_paths_on_cuda_equal_the_loop(monkeypatch, dtype, batch):
    torch.manual_seed(0)
    layer = SoftMoE(64, 8, 128, slots_per_expert=2, bias=True, activation="gelu").to(CUDA, dtype)
    x = torch.randn(batch, 16, 64, device=CUDA, dtype=dtype)
    with torch.inference_mode():
        assert layer.keep_backend(x, 2) != "loop" or dtype == torch.bfloat16 and batch > 4
        got, want = layer(x, k=2), _loop(layer, x, 2, monkeypatch)
    assert relative_error(got, want) < (1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keep_path_as_a_cuda_graph_equals_eager(dtype):
    """Batch 1 (and bf16 at any batch on 9.x/10.x): no host sync, so the layer is captured once
    and replays on new inputs copied into the captured one."""
    torch.manual_seed(0)
    layer = SoftMoE(64, 8, 128, bias=True, activation="gelu").to(CUDA, dtype)
    x = torch.randn(1, 16, 64, device=CUDA, dtype=dtype)
    out = {}
    with torch.inference_mode():
        fns, graphed = timing.as_graphs({"keep": lambda: out.__setitem__("y", layer(x, k=2)),
                                         "dense": lambda: out.__setitem__("d", layer(x))}, "cuda", [layer])
        assert graphed == {"keep": True, "dense": True}
        for _ in range(3):
            x.copy_(torch.randn_like(x))
            fns["keep"]()
            fns["dense"]()
            torch.testing.assert_close(out["y"], layer(x, k=2))
            torch.testing.assert_close(out["d"], layer(x))
