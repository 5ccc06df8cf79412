"""How `softmoe latency` and `softmoe bench` time things: one interleaved timing loop, CUDA-graph
capture, one FLOP count, one hardware description and the paper's table 3 layer (docs/study.md
§5 E4).

Discipline: warm-up calls, then `repeats` timed calls of every callable, round robin with the
order rotated each round, so drift of the machine affects all alike; the median and quartiles
of the wall clock (CUDA events on a GPU) and, on the CPU, of the process CPU time. On CUDA every
callable without a host sync is captured once as a CUDA graph and replayed, so that the host's
issuing of small ops is not what is timed; fp32 runs with TF32 off.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Callable, Iterable

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from softmoe.base import numerics
from softmoe.model.layer import SoftMoE
from softmoe.provenance.record import machine

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def precisions(device: str) -> list[str]:
    """The precisions timed on a device: fp32 (TF32 off) everywhere, bf16 too on CUDA."""
    return ["fp32", "bf16"] if device == "cuda" else ["fp32"]


@contextlib.contextmanager
def tf32_off():
    """fp32 matmuls in full fp32 on CUDA (PyTorch's default, made explicit for the timings)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---- the timing loop -----------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def summarize_times(seconds: list[float], cpu_seconds: list[float] | None = None) -> dict:
    """Median, quartiles (inclusive method) and minimum in ms; the same of the process CPU time
    (`cpu_` keys) when given: robust to other jobs on the machine, = wall time for 1 idle thread."""
    ms = sorted(s * 1e3 for s in seconds)
    q25, median, q75 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else ms * 3
    stats = {"median_ms": median, "q25_ms": q25, "q75_ms": q75, "min_ms": ms[0], "repeats": len(ms)}
    if cpu_seconds is not None:
        cpu = summarize_times(cpu_seconds)
        stats.update({f"cpu_{key}": cpu[key] for key in ("median_ms", "q25_ms", "q75_ms")})
    return stats


def _timed(fn: Callable[[], object], device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; on CUDA the wall time between two events."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start_cpu = time.process_time()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, time.process_time() - start_cpu
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - start_cpu


def time_interleaved(fns: dict[str, Callable[[], object]], device: str, warmup: int, repeats: int,
                     budget_s: float = math.inf, min_repeats: int = 1) -> dict[str, dict]:
    """Time several callables round robin (order rotated every round) -> {name: stats}
    (summarize_times of `time_rounds`; on the CPU with the process CPU time too)."""
    rounds = time_rounds(fns, device, warmup, repeats, budget_s, min_repeats)
    return {name: summarize_times(wall, cpu if device == "cpu" else None) for name, (wall, cpu) in rounds.items()}


def time_rounds(fns: dict[str, Callable[[], object]], device: str, warmup: int, repeats: int,
                budget_s: float = math.inf, min_repeats: int = 1) -> dict[str, tuple[list[float], list[float]]]:
    """Time several callables round robin (order rotated every round) -> {name: (wall seconds,
    process CPU seconds)}, one entry per round in round order: entry r of two callables was
    measured in the same round r, side by side, so their ratio is free of slow drift of the
    machine (the per-round ratios of softmoe.steps.latency).

    Each callable's first warm-up call is timed; one whose `repeats` calls would take more than
    its share of budget_s (budget_s / number of callables) gets fewer timed calls (down to
    min_repeats, its first rounds) and no further warm-up."""
    names = list(fns)
    first = {}
    for name in names:
        sync(device)
        start = time.perf_counter()
        fns[name]()
        sync(device)
        first[name] = time.perf_counter() - start
    share = budget_s / len(names)
    todo = {name: repeats if share == math.inf else max(min_repeats, min(repeats, int(share / max(t, 1e-9))))
            for name, t in first.items()}
    for _ in range(warmup - 1):
        for name in names:
            if todo[name] == repeats:
                fns[name]()
    wall, cpu = {name: [] for name in names}, {name: [] for name in names}
    for r in range(max(todo.values())):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if r >= todo[name]:
                continue
            sync(device)
            seconds, cpu_seconds = _timed(fns[name], device)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    return {name: (wall[name], cpu[name]) for name in names}


# ---- CUDA graphs ---------------------------------------------------------------------------
def host_syncs(fn: Callable[[], object], layers: Iterable[SoftMoE]) -> bool:
    """Whether one call of fn runs a Soft MoE keep path that reads group sizes on the host
    (`SoftMoE.keep_backend` "loop"): such a call cannot be captured as a CUDA graph."""
    backends = []

    def record(layer, args, kwargs):
        k = kwargs.get("k")
        if kwargs.get("keep") is not None:
            k = kwargs["keep"].shape[1]
        if k is not None:
            backends.append(layer.keep_backend(args[0], k))

    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    try:
        fn()
    finally:
        for handle in handles:
            handle.remove()
    return "loop" in backends


def cuda_graph(fn: Callable[[], object], warmup: int = 3) -> Callable[[], object]:
    """fn captured once as a CUDA graph (after warm-up calls on a side stream); returns its replay.
    fn must read and write the same tensors at every call (true of a closure over fixed inputs)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def as_graphs(fns: dict[str, Callable[[], object]], device: str,
              layers: Iterable[SoftMoE]) -> tuple[dict[str, Callable[[], object]], dict[str, bool]]:
    """On CUDA, each callable without a host sync replaced by the replay of its CUDA graph;
    returns the callables and, per name, whether it is a graph (always False on the CPU)."""
    layers = list(layers)
    graphed = {name: device == "cuda" and not host_syncs(fn, layers) for name, fn in fns.items()}
    return {name: cuda_graph(fn) if graphed[name] else fn for name, fn in fns.items()}, graphed


# ---- FLOPs --------------------------------------------------------------------------------
@register_flop_formula(torch.ops.aten._grouped_mm)
def _grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """Rows (R, K) split into groups times (G, K, N): every row in one group, 2*R*K*N (torch's
    FlopCounterMode has no formula for it; the keep path's grouped GEMM uses this form)."""
    if len(a_shape) == 2 and len(b_shape) == 3:
        return 2 * a_shape[0] * a_shape[1] * b_shape[2]
    raise NotImplementedError(f"FLOPs of _grouped_mm {a_shape} x {b_shape}")


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmul-family ops one call of fn runs (forward and, inside fn, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ---- the table 3 layer -------------------------------------------------------------------------
def wide_layers(dim: int, experts: int, hidden: int, layers: int, seed: int = 0) -> list[SoftMoE]:
    """`layers` Soft MoE layers as in the paper's table 3: n wide GELU experts with bias,
    normalized routing, LeCun Φ; seeded initialization."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [SoftMoE(dim, experts, hidden, normalize=True, bias=True, activation="gelu",
                        phi_init="lecun") for _ in range(layers)]


def run_layers(layers: list[SoftMoE], x: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """The layers in sequence (nothing between them); k: Algorithm 1 in each on its own input,
    None: the dense forward."""
    for layer in layers:
        x = layer(x, k=k)
    return x


# ---- hardware ----------------------------------------------------------------------------
def hardware() -> dict:
    """What the timings ran on (with the code paths, softmoe.base.numerics)."""
    cuda = torch.cuda.is_available()
    info = {**machine(), "cpu_id": numerics.cpu_id(), "numerics": numerics.mode(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "cuda": torch.version.cuda if cuda else None}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(capability=f"{props.major}.{props.minor}", gpu_memory_gb=round(props.total_memory / 2**30, 1))
    return info
