"""Inference time of the Soft MoE layers when only k experts run (STUDY.md E4).

Only the Soft MoE layers are timed, in sequence (each layer's output is the next one's input),
under torch.inference_mode on random inputs. k = n runs the dense layer (every expert, no
selection); k < n runs Algorithm 1 inside every layer (`layer(x, k=k)`: per input, the k experts
with the largest combine weight) and then Algorithm 2 (each expert only on the inputs that kept
it). Repeats are interleaved over k so that drift of the machine affects every k alike.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from softmoe import atomic
from softmoe.layer import SoftMoE

COLUMNS = ["config", "n", "k", "k_frac", "batch", "device", "median_ms", "q25_ms", "q75_ms",
           "repeats", "ratio", "ideal", "flops", "flop_ratio"]


def measure(params: dict, run_dirs: list[Path], out_csv: Path, hardware_json: Path) -> None:
    """Time every trained run's Soft MoE layers and the wide configuration; write latency.csv
    and the hardware description."""
    from softmoe import train
    from softmoe.evaluate import run_metadata

    cfg = params["latency"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for run_dir in run_dirs:
        model = train.load_trained(run_dir, params)
        meta = run_metadata(run_dir)
        layers, shape = trained_layers(model, meta)
        rows += time_config(f"{meta['dataset']}/{Path(run_dir).name}", layers, shape, cfg, device)
    wide = cfg["wide"]
    rows += time_config("wide", wide_layers(wide), (wide["tokens"], wide["dim"]), cfg, device)
    atomic.write_csv(out_csv, pd.DataFrame(rows, columns=COLUMNS))
    atomic.write_json(hardware_json, hardware())


def trained_layers(model: torch.nn.Module, meta: dict) -> tuple[list[SoftMoE], tuple[int, int]]:
    """The model's Soft MoE layers and their input shape (tokens, dim), read from one forward
    pass of a blank input of the run's image shape (metadata in_chans, img_size)."""
    layers = [m for m in model.modules() if isinstance(m, SoftMoE)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Soft MoE layer to time")
    shapes = []
    hook = layers[0].register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape[1:])))
    size = int(meta["img_size"])
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, int(meta["in_chans"]), size, size))
    finally:
        hook.remove()
    return layers, shapes[0]


def wide_layers(wide: dict) -> list[SoftMoE]:
    """params.latency.wide: `layers` Soft MoE layers of n experts of width hidden_per_expert *
    width (GELU, bias, normalized routing, LeCun Φ), seeded initialization."""
    hidden = max(1, round(wide["hidden_per_expert"] * wide["width"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return [SoftMoE(wide["dim"], wide["experts"], hidden, normalize=True, bias=True,
                        activation="gelu", phi_init="lecun") for _ in range(wide["layers"])]


def time_config(config: str, layers: list[SoftMoE], shape: tuple[int, int], cfg: dict,
                device: torch.device) -> list[dict]:
    """Rows of latency.csv for one configuration: every k of cfg.fractions (and k = n) at every
    batch size of cfg.batch_sizes."""
    layers = [layer.to(device).eval() for layer in layers]
    n = layers[0].num_experts
    ks = sorted({n} | {max(1, round(n * f)) for f in cfg["fractions"]}, reverse=True)
    rows = []
    generator = torch.Generator().manual_seed(0)
    for batch in cfg["batch_sizes"]:
        x = torch.randn(batch, *shape, generator=generator).to(device)
        times = _timings(layers, x, ks, cfg["warmup"], cfg["repeats"], device)
        flops = {k: _flops(layers, x, k) for k in ks}
        full = float(np.median(times[n]))
        for k in ks:
            q25, median, q75 = np.percentile(times[k], [25, 50, 75])
            rows.append({"config": config, "n": n, "k": k, "k_frac": k / n, "batch": batch,
                         "device": device.type, "median_ms": median, "q25_ms": q25, "q75_ms": q75,
                         "repeats": cfg["repeats"], "ratio": median / full, "ideal": k / n,
                         "flops": flops[k], "flop_ratio": flops[k] / flops[n]})
    return rows


def run_layers(layers: list[SoftMoE], x: torch.Tensor, k: int) -> torch.Tensor:
    """The layers in sequence; k < n: Algorithm 1 in each layer on its own input."""
    for layer in layers:
        x = layer(x) if k >= layer.num_experts else layer(x, k=k)
    return x


def _timings(layers, x, ks, warmup: int, repeats: int, device) -> dict[int, list[float]]:
    """Milliseconds per call of run_layers for each k, repeats interleaved over k."""
    times = {k: [] for k in ks}
    with torch.inference_mode():
        for k in ks:
            for _ in range(warmup):
                run_layers(layers, x, k)
        for _ in range(repeats):
            for k in ks:
                _sync(device)
                start = time.perf_counter()
                run_layers(layers, x, k)
                _sync(device)
                times[k].append((time.perf_counter() - start) * 1e3)
    return times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flops(layers, x, k) -> int:
    """FLOPs of one call as counted by torch's FlopCounterMode (matrix products)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        run_layers(layers, x, k)
    return int(counter.get_total_flops())


def hardware() -> dict:
    """What the timings ran on."""
    cuda = torch.cuda.is_available()
    return {"cpu": _cpu_model(), "cores": os.cpu_count(),
            "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "cuda": torch.version.cuda if cuda else None,
            "python": platform.python_version(), "os": platform.platform()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
