"""Inference time of the Soft MoE layers when only k experts run (docs/study.md §5 E4).

Only the Soft MoE layers are timed, in sequence (each layer's output is the next one's input),
under torch.inference_mode on random inputs. k = n runs the dense layer (every expert, no
selection); k < n runs Algorithm 1 inside every layer (`layer(x, k=k)`: per input, the k experts
with the largest combine weight) and then Algorithm 2 (each expert only on the inputs that kept
it). Timing as in softmoe.bench.timing: repeats interleaved over k; on CUDA each k captured as a CUDA
graph where it has no host sync, in fp32 (TF32 off) and in bf16 (rows of configuration
"<config>@bf16"); on the CPU fp32 only. Besides the summary per k (latency.csv), every timed
call is kept (latency_rounds.csv): round r's time of each k over the same round's k = n time is
one paired sample of the ratio, from which claim c2 builds its interval on the median ratio.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from softmoe.base import atomic
from softmoe.bench import timing
from softmoe.model.layer import SoftMoE
from softmoe.study.params import Latency, Model, Wide
from softmoe.study.layout import WIDE
from softmoe.study.stats import latency_ks

# latency.csv (the E4 table, softmoe.experiments.e4_latency checks it when read)
COLUMNS = ["config", "n", "k", "k_frac", "batch", "device", "median_ms", "q25_ms", "q75_ms", "repeats", "ratio",
           "ideal", "flops", "flop_ratio"]
ROUND_COLUMNS = ["config", "n", "k", "batch", "round", "ms", "ratio_to_full"]   # latency_rounds.csv


def measure(cfg: Latency, model: Model, run_dirs: list[Path], out_csv: Path, hardware_json: Path,
            rounds_csv: Path) -> None:
    """Time every trained run's Soft MoE layers (runs of params.model) and the wide
    configuration under params.latency; write latency.csv, every timed call (rounds_csv,
    latency_rounds.csv) and the hardware description."""
    from softmoe.model import modelfile

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, rounds = [], []
    for run_dir in run_dirs:
        net = modelfile.load_trained(run_dir, model)
        meta = modelfile.run_metadata(run_dir)
        layers, shape = trained_layers(net, meta)
        summary, calls = time_config(f"{meta['dataset']}/{Path(run_dir).name}", layers, shape, cfg, device)
        rows, rounds = rows + summary, rounds + calls
    wide = cfg.wide
    summary, calls = time_config(WIDE, wide_layers(wide), (wide.tokens, wide.dim), cfg, device)
    atomic.write_csv(out_csv, pd.DataFrame(rows + summary, columns=COLUMNS))
    atomic.write_csv(rounds_csv, pd.DataFrame(rounds + calls, columns=ROUND_COLUMNS))
    atomic.write_json(hardware_json, timing.hardware())


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


def wide_layers(wide: Wide) -> list[SoftMoE]:
    """params.latency.wide: `layers` table 3 layers of n experts of width hidden_per_expert * width."""
    hidden = max(1, round(wide.hidden_per_expert * wide.width))
    return timing.wide_layers(wide.dim, wide.experts, hidden, wide.layers)


def time_config(config: str, layers: list[SoftMoE], shape: tuple[int, int], cfg: Latency,
                device: torch.device) -> tuple[list[dict], list[dict]]:
    """Rows of latency.csv for one configuration: every k of cfg.fractions (and k = n) at every
    batch size of cfg.batch_sizes, in every precision of timing.precisions; and the rows of
    latency_rounds.csv, one per timed call (`round_rows`)."""
    n = layers[0].num_experts
    ks = latency_ks(n, cfg.fractions)
    rows, rounds = [], []
    for precision in timing.precisions(device.type):
        dtype = timing.DTYPES[precision]
        layers = [layer.to(device, dtype).eval() for layer in layers]
        name = config if precision == "fp32" else f"{config}@{precision}"
        generator = torch.Generator().manual_seed(0)
        for batch in cfg.batch_sizes:
            x = torch.randn(batch, *shape, generator=generator).to(device, dtype)
            fns = {k: (lambda k=k: timing.run_layers(layers, x, None if k == n else k)) for k in ks}
            with torch.inference_mode(), timing.tf32_off():
                flops = {k: timing.count_flops(fn) for k, fn in fns.items()}
                fns, _ = timing.as_graphs(fns, device.type, layers)
                calls = timing.time_rounds(fns, device.type, cfg.warmup, cfg.repeats)
            times = {k: timing.summarize_times(wall, cpu if device.type == "cpu" else None)
                     for k, (wall, cpu) in calls.items()}
            rounds += round_rows(name, n, batch, {k: wall for k, (wall, _) in calls.items()})
            full = times[n]["median_ms"]
            for k in ks:
                t = times[k]
                rows.append({"config": name, "n": n, "k": k, "k_frac": k / n, "batch": batch,
                             "device": device.type, "median_ms": t["median_ms"], "q25_ms": t["q25_ms"],
                             "q75_ms": t["q75_ms"], "repeats": t["repeats"], "ratio": t["median_ms"] / full,
                             "ideal": k / n, "flops": flops[k], "flop_ratio": flops[k] / flops[n]})
    return rows, rounds


def round_rows(config: str, n: int, batch: int, seconds: dict[int, list[float]]) -> list[dict]:
    """latency_rounds.csv rows of one (configuration, batch): per k and round r, the call's time
    in ms and its ratio to the k = n call of the same round (seconds: k -> wall seconds per round,
    softmoe.bench.timing.time_rounds)."""
    full = seconds[n]
    return [{"config": config, "n": n, "k": k, "batch": batch, "round": r, "ms": s * 1e3,
             "ratio_to_full": s / full[r]}
            for k in sorted(seconds, reverse=True) for r, s in enumerate(seconds[k]) if r < len(full)]
