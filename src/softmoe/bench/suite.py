"""Benchmarks (issue 6): our Soft MoE layer against other formulations of the same math,
selective inference through Algorithm 1, training throughput and workflow overhead.

Timing, FLOP counts, CUDA graphs and the table 3 layer come from softmoe.bench.timing (shared with
`softmoe latency`): warm-up, then `repeats` timed calls (fewer, down to one, for a callable so
slow that they would overrun the group's time budget), interleaved round robin in one process so
every ratio comes from one run under the same machine load; median and inter-quartile range of
the wall clock and, on the CPU, of the process CPU time. FLOPs: matmul-family ops, forward and
backward.

`run` (this module) writes reports/benchmarks.json and a Markdown table; benchmarks/README.md
explains both. The sizes are in plans, the other formulations in formulations, the timed cases in cases,
the workflow's files and overhead in workflow, the targets and the Markdown in output (all of
softmoe.bench). SOFTMOE_BENCH_DEVICES (comma list, default "cpu" plus "cuda" when
available) picks the devices of items 1-3; benchmarks/gpu.sh sets it to "cuda".
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from softmoe.base import atomic
from softmoe.bench import timing
from softmoe.provenance import deps, record
from softmoe.study import layout
from softmoe.bench.cases import layer_bench, log, matmul_peak, selective_bench, training_bench
from softmoe.bench.output import markdown, targets
from softmoe.bench.plans import FULL, QUICK, plan_for
from softmoe.bench.workflow import study_benchmarks, workflow_overhead
from softmoe.base.errors import UserError

SCHEMA = 1
DEVICES_ENV = "SOFTMOE_BENCH_DEVICES"


def machine(devices: list[str]) -> dict:
    """timing.hardware() (the one machine description of timings) plus the devices benchmarked
    and the load when the run started."""
    hw = timing.hardware()
    names = {"cpu": hw["cpu"], **({"cuda": hw["device"]} if "cuda" in devices else {})}
    return {**hw, "devices": devices, "device_name": names,
            "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _devices() -> list[str]:
    raw = os.environ.get(DEVICES_ENV)
    if raw is None:
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = [d.strip() for d in raw.split(",") if d.strip()]
    usable = {"cpu"} | ({"cuda"} if torch.cuda.is_available() else set())
    if not devices or not set(devices) <= usable:
        raise UserError(f"environment variable {DEVICES_ENV}={raw!r}: use a comma list of cpu and/or "
                        "cuda (cuda only where torch.cuda.is_available()), or unset it")
    return devices


MEASURED = {"bench.cases", "bench.formulations", "bench.timing"}   # the modules whose code the timings measure


def code_digest() -> dict[str, str]:
    """sha256 of every file the timed code is made of (derived from imports, softmoe.provenance.deps), so
    that a benchmark file names the code it measured and a reader can tell when it is stale."""
    return deps.code_digests(deps.module_deps(MEASURED))


def run(out_json: Path, out_md: Path, quick: bool) -> None:
    """Run every benchmark (threads already set by the CLI) and write the JSON and Markdown."""
    devices = _devices()
    study = study_benchmarks(Path(layout.BENCHMARKS))
    torch.manual_seed(0)
    result = {"schema": SCHEMA, "quick": quick, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(devices), "code": code_digest(), "commit": record.git_state(Path.cwd())["commit"],
              "plans": {}, "peak": {}, "layer": [], "selective": [],
              "training": [], "study": study, "workflow": None, "skipped": []}
    for device in devices:
        plan = plan_for(quick, device)
        result["plans"][device] = asdict(plan)
        log(f"{device}: matmul peak")
        result["peak"][device] = matmul_peak(device, plan.peak_size, plan.warmup, plan.repeats)
        log(f"{device}: layer forward+backward")
        result["layer"] += layer_bench(plan, device, result["peak"][device], result["skipped"])
        log(f"{device}: selective inference")
        result["selective"] += selective_bench(plan, device)
        log(f"{device}: training throughput")
        result["training"] += training_bench(plan, device)
    if (QUICK if quick else FULL).workflow:
        log("workflow overhead")
        result["workflow"] = workflow_overhead(Path.cwd())
    result["targets"] = targets(result)
    atomic.write_json(out_json, result)
    atomic.write_text(out_md, markdown(result))
    log(f"wrote {out_json} and {out_md}")
