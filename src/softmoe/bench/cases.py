"""The timed cases of `softmoe bench` (benchmarks/README.md): the machine's matmul peak, the
layer forward + backward at a fixed budget against the other formulations (item 1), selective
inference through Algorithm 1 and the keep path (item 2) and training throughput (item 3). Each
returns rows of times (softmoe.bench.timing), FLOPs, rates and ratios."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from softmoe.bench import timing
from softmoe.bench.formulations import LoopSoftMoE, VmapSoftMoE
from softmoe.bench.plans import Plan
from softmoe.model.layer import SoftMoE
from softmoe.model.models import MnistSoftMoE
from softmoe.study.stats import latency_ks


def log(message: str) -> None:
    """One progress line on stderr."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---- ratios and rates -----------------------------------------------------------------------
def ratios(stats: dict, base: dict, key: str) -> dict:
    """{key: median / base median} for the wall clock, and `cpu_<key>` for the CPU clock if measured."""
    out = {key: stats["median_ms"] / base["median_ms"]}
    if "cpu_median_ms" in stats and "cpu_median_ms" in base:
        out[f"cpu_{key}"] = stats["cpu_median_ms"] / base["cpu_median_ms"]
    return out


def rates(flops: int, stats: dict, peak: dict | None = None) -> dict:
    """GFLOP/s per clock and, given the peak, the share of it."""
    out = {"gflops": flops / stats["median_ms"] / 1e6}
    if "cpu_median_ms" in stats:
        out["cpu_gflops"] = flops / stats["cpu_median_ms"] / 1e6
    if peak is not None:
        out["peak_share"] = out["gflops"] / peak["gflops"]
        if "cpu_gflops" in out and "cpu_gflops" in peak:
            out["cpu_peak_share"] = out["cpu_gflops"] / peak["cpu_gflops"]
    return out


def matmul_peak(device: str, size: int, warmup: int, repeats: int) -> dict:
    """This machine's fp32 matmul rate: a size x size x size product."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    stats = timing.time_interleaved({"matmul": lambda: a @ b}, device, warmup, max(5, repeats // 3))["matmul"]
    flops = 2 * size ** 3
    return {"size": size, "flops": flops, **stats, **rates(flops, stats),
            "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32) if device == "cuda" else False}


# ---- 1. layer forward + backward at a fixed budget -----------------------------------------
def _fwd_bwd(module: nn.Module, params_of: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step():
        params_of.zero_grad(set_to_none=True)
        module(x).sum().backward()
    return step


def _compile_step(ours: SoftMoE, x: torch.Tensor, budget: dict) -> tuple[Callable | None, dict]:
    """torch.compile(ours) and its first (compiling) call; None and the reason if not usable."""
    if budget["left_s"] <= 0:
        return None, {"why": "compile time budget of this run spent"}
    torch._dynamo.reset()          # fresh cache: no silent fallback to eager after recompiles
    start = time.perf_counter()
    try:
        step = _fwd_bwd(torch.compile(ours), ours, x)
        step()
    except Exception as err:       # any compiler failure: record it, keep benchmarking
        budget["left_s"] = 0
        return None, {"why": f"torch.compile failed: {type(err).__name__}: {str(err)[:300]}"}
    spent = time.perf_counter() - start
    budget["left_s"] -= spent
    return step, {"compile_s": spent}


def layer_bench(plan: Plan, device: str, peak: dict, skipped: list) -> list[dict]:
    """Item 1: ms, GFLOP/s and share of peak per (shape, n, formulation)."""
    rows, budget = [], {"left_s": plan.compile_budget_s}
    for config, shape in plan.layer_shapes.items():
        for n in plan.layer_experts:
            hidden = shape.total_hidden // n
            where = {"device": device, "config": config, "n": n}
            if hidden == 0:
                skipped.append({**where, "what": "layer", "why": f"hidden {shape.total_hidden}//{n} = 0"})
                continue
            with torch.device(device):
                ours = SoftMoE(shape.dim, n, hidden, normalize=True, bias=False, activation="relu")
                x = torch.randn(shape.batch, shape.tokens, shape.dim)
            steps = {"ours": _fwd_bwd(ours, ours, x)}
            for name, cls in (("loop", LoopSoftMoE), ("vmap", VmapSoftMoE)):
                other = cls(ours)
                steps[name] = _fwd_bwd(other, other, x)
            compile_info = {}
            if plan.compile:
                step, compile_info = _compile_step(ours, x, budget)
                if step is None:
                    skipped.append({**where, "what": "compiled", **compile_info})
                else:
                    steps["compiled"] = step
            log(f"{device}: layer {config} n={n}: {', '.join(steps)}")
            flops = timing.count_flops(steps["ours"])
            times = timing.time_interleaved(steps, device, plan.warmup, plan.repeats, plan.group_budget_s)
            for name, stats in times.items():
                rows.append({**where, **asdict(shape), "hidden": hidden, "formulation": name, **stats,
                             "flops": flops, **rates(flops, stats, peak),
                             **ratios(stats, times["ours"], "ratio_to_ours"),
                             **(compile_info if name == "compiled" else {})})
    return rows


# ---- 2. selective inference -----------------------------------------------------------------
def _selective_rows(forward: Callable, layers: list[SoftMoE], x: torch.Tensor, n: int, ks: list[int],
                    device: str, plan: Plan, where: dict) -> list[dict]:
    """Dense forward (k = n, all experts) beside Algorithm 1 + keep path at every k; on CUDA
    captured as CUDA graphs where there is no host sync (`cuda_graph` says which)."""
    fns = {"dense": lambda: forward(x)}
    fns.update({f"k={k}": (lambda k=k: forward(x, k=k)) for k in ks})
    with torch.inference_mode(), timing.tf32_off():
        flops = {name: timing.count_flops(fn) for name, fn in fns.items()}
        fns, graphed = timing.as_graphs(fns, device, layers)
        times = timing.time_interleaved(fns, device, plan.warmup, plan.repeats, plan.group_budget_s)
    rows = []
    for name, stats in times.items():
        k = n if name == "dense" else int(name[2:])
        rows.append({**where, "n": n, "k": k, "batch": x.shape[0],
                     "path": "dense" if name == "dense" else "selective", **stats,
                     **ratios(stats, times["dense"], "ratio"), "ideal": k / n, "flops": flops[name],
                     "flop_ratio": flops[name] / flops["dense"]})
        if device == "cuda":
            rows[-1]["cuda_graph"] = graphed[name]
    return rows


def selective_bench(plan: Plan, device: str) -> list[dict]:
    """Item 2: the MNIST model grid (untrained, random images) and the wide configuration, in
    every precision of timing.precisions (configuration "<name>@bf16" for bf16)."""
    rows = []
    for precision in timing.precisions(device):
        dtype, tag = timing.DTYPES[precision], "" if precision == "fp32" else f"@{precision}"
        for n in plan.mnist_experts:
            with torch.device(device):
                model = MnistSoftMoE(n).to(dtype).eval()
            layers = [m for m in model.modules() if isinstance(m, SoftMoE)]
            for batch in plan.batches:
                log(f"{device}: selective mnist{tag} n={n} batch {batch}")
                images = torch.rand(batch, 1, 28, 28, device=device, dtype=dtype)
                rows += _selective_rows(model, layers, images, n, latency_ks(n, plan.fractions), device, plan,
                                        {"device": device, "config": f"mnist{tag}"})
            del model, layers
        for wide in plan.wides:
            layers = [layer.to(device, dtype).eval()
                      for layer in timing.wide_layers(wide.dim, wide.experts, wide.hidden, wide.layers)]
            where = {"device": device, "config": f"{wide.name}{tag}", "layers": wide.layers, "dim": wide.dim,
                     "tokens": wide.tokens, "hidden": wide.hidden, "note": wide.note}
            for batch in plan.batches:
                log(f"{device}: selective {wide.name}{tag} batch {batch}")
                x = torch.randn(batch, wide.tokens, wide.dim, device=device, dtype=dtype)
                rows += _selective_rows(lambda x, k=None: timing.run_layers(layers, x, k), layers, x,
                                        wide.experts, latency_ks(wide.experts, plan.wide_fractions), device, plan, where)
            del layers
    return rows


# ---- 3. training throughput -----------------------------------------------------------------
def training_bench(plan: Plan, device: str) -> list[dict]:
    """Adam (lr 1e-3) steps of the default MNIST model on random images: samples/s per n."""
    rows = []
    for n in plan.train_experts:
        with torch.device(device):
            model = MnistSoftMoE(n)
            images = torch.rand(plan.train_batch, 1, 28, 28)
            labels = torch.randint(0, 10, (plan.train_batch,))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()

        stats = timing.time_interleaved({"step": step}, device, plan.train_warmup, plan.train_steps)["step"]
        rows.append({"device": device, "n": n, "batch": plan.train_batch, "optimizer": "adam lr 1e-3",
                     **stats, "samples_per_s": plan.train_batch / (stats["median_ms"] / 1e3)})
        if "cpu_median_ms" in stats:
            rows[-1]["cpu_samples_per_s"] = plan.train_batch / (stats["cpu_median_ms"] / 1e3)
    return rows
