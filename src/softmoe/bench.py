"""Benchmarks (issue 6): our Soft MoE layer against other formulations of the same math,
selective inference through Algorithm 1, training throughput and workflow overhead.

Timing, FLOP counts, CUDA graphs and the table 3 layer come from softmoe.timing (shared with
`softmoe latency`): warm-up, then `repeats` timed calls (fewer, down to one, for a callable so
slow that they would overrun the group's time budget), interleaved round robin in one process so
every ratio comes from one run under the same machine load; median and inter-quartile range of
the wall clock and, on the CPU, of the process CPU time. FLOPs: matmul-family ops, forward and
backward.

`run` writes reports/benchmarks.json and a Markdown table; benchmarks/README.md explains both.
SOFTMOE_BENCH_DEVICES (comma list, default "cpu" plus "cuda" when available) picks the devices
of items 1-3; benchmarks/gpu.sh sets it to "cuda".
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from softmoe import atomic, layout, timing
from softmoe.errors import UserError
from softmoe.layer import SoftMoE
from softmoe.models import MnistSoftMoE
from softmoe.stats import latency_ks

SCHEMA = 1
MNIST_GRID = (2, 4, 8, 16, 32, 64, 128, 256, 512)       # the default study's expert grid
DEVICES_ENV = "SOFTMOE_BENCH_DEVICES"


# ---- what is measured ---------------------------------------------------------------------
@dataclass(frozen=True)
class LayerShape:
    """One fixed-budget layer setting: every n gets hidden = total_hidden // n."""
    batch: int
    tokens: int
    dim: int
    total_hidden: int


@dataclass(frozen=True)
class WideShape:
    """A stack of Soft MoE layers with few, wide GELU experts (docs/study.md §5 E4, table 3)."""
    name: str
    experts: int
    dim: int
    tokens: int
    hidden: int
    layers: int
    note: str


@dataclass(frozen=True)
class Plan:
    warmup: int
    repeats: int
    group_budget_s: float       # about this long per group of interleaved timings
    peak_size: int
    layer_shapes: dict[str, LayerShape]
    layer_experts: tuple[int, ...]
    compile: bool
    compile_budget_s: float
    mnist_experts: tuple[int, ...]
    batches: tuple[int, ...]
    fractions: tuple[float, ...]
    wides: tuple[WideShape, ...]
    wide_fractions: tuple[float, ...]
    train_experts: tuple[int, ...]
    train_batch: int
    train_warmup: int
    train_steps: int
    workflow: bool


FULL = Plan(
    warmup=3, repeats=15, group_budget_s=30.0, peak_size=2048,
    layer_shapes={"small": LayerShape(64, 16, 64, 256), "mnist": LayerShape(256, 4, 196, 784)},
    layer_experts=(1, 2, 4, 16, 64, 256, 512), compile=True, compile_budget_s=240.0,
    mnist_experts=(16, 64, 512), batches=(1, 100), fractions=(1.0, 0.75, 0.5, 0.25, 0.125),
    wides=(WideShape("wide", 8, 768, 197, 768 * 40 // 8, 2,
                     "table 3 scaled for CPU: hidden 768*40/8 = 3840 per expert, 2 of the 6 layers"),
           WideShape("wide-full", 8, 768, 197, 768 * 40, 1,
                     "one layer of table 3 at full width: hidden 768*40 = 30720 per expert")),
    wide_fractions=(1.0, 0.75, 0.5, 0.25, 0.125),
    train_experts=MNIST_GRID, train_batch=256, train_warmup=3, train_steps=10, workflow=True)

QUICK = Plan(
    warmup=1, repeats=3, group_budget_s=10.0, peak_size=128,
    layer_shapes={"tiny": LayerShape(8, 4, 16, 32)}, layer_experts=(1, 2, 4, 8),
    compile=False, compile_budget_s=0.0,
    mnist_experts=(4,), batches=(1, 8), fractions=(1.0, 0.5, 0.25),
    wides=(WideShape("wide", 4, 32, 9, 64, 1, "tiny stand-in for table 3 (--quick)"),),
    wide_fractions=(1.0, 0.5, 0.25),
    train_experts=(2, 4), train_batch=16, train_warmup=1, train_steps=3, workflow=False)

# On a GPU: more repeats (calls are cheap) and the study's full table 3 configuration.
GPU = dict(warmup=5, repeats=30, group_budget_s=20.0, peak_size=8192, compile_budget_s=60.0,
           wides=(WideShape("wide-full", 8, 768, 197, 768 * 40, 6, "table 3: ViT-B dims, 6 Soft MoE "
                            "layers, n=8 experts of hidden 768*40"),),
           wide_fractions=(1.0, 0.75, 0.5, 0.25))


def plan_for(quick: bool, device: str) -> Plan:
    plan = QUICK if quick else FULL
    return replace(plan, **GPU) if device == "cuda" and not quick else plan


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


# ---- the other formulations (same math as SoftMoE, built from its weights) -----------------
class LoopSoftMoE(nn.Module):
    """How the original study's code was written: einsum routing, then a Python loop over an
    nn.ModuleList of nn.Sequential(Linear, act, Linear) experts whose outputs are stacked."""

    def __init__(self, ref: SoftMoE):
        super().__init__()
        self.n, self.p, self.normalize = ref.num_experts, ref.slots_per_expert, ref.normalize
        self.phi = nn.Parameter(ref.phi.detach().clone().view(ref.dim, self.n, self.p))
        self.scale = nn.Parameter(ref.scale.detach().clone()) if ref.normalize else None
        self.experts = nn.ModuleList(_expert(ref, j) for j in range(self.n))

    def expert_outputs(self, slots: torch.Tensor) -> torch.Tensor:
        """slots (b, n, p, d) -> (b, n, p, d)."""
        return torch.stack([f(slots[:, j]) for j, f in enumerate(self.experts)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phi = self.phi
        if self.normalize:
            x = F.normalize(x, dim=-1)
            phi = F.normalize(phi, dim=0) * self.scale
        logits = torch.einsum("bmd,dnp->bmnp", x, phi)
        dispatch = logits.softmax(dim=1)
        combine = logits.flatten(start_dim=2).softmax(dim=-1).view_as(logits)
        slots = torch.einsum("bmd,bmnp->bnpd", x, dispatch)
        return torch.einsum("bnpd,bmnp->bmd", self.expert_outputs(slots), combine)


class VmapSoftMoE(LoopSoftMoE):
    """The same experts run by torch.vmap of functional_call over stack_module_state."""

    def __init__(self, ref: SoftMoE):
        super().__init__(ref)
        params, _ = torch.func.stack_module_state(list(self.experts))
        del self.experts
        self.names = list(params)
        self.stacked = nn.ParameterList(nn.Parameter(t.detach()) for t in params.values())
        # A shape template only (meta tensors); deliberately not registered as a submodule.
        self.__dict__["template"] = copy.deepcopy(_expert(ref, 0)).to("meta")

    def expert_outputs(self, slots: torch.Tensor) -> torch.Tensor:
        """Experts mapped over a contiguous leading expert axis (vmap over a strided axis 1 ran
        about 20x slower here)."""
        def one(params, z):
            return torch.func.functional_call(self.template, params, (z,))
        params = dict(zip(self.names, self.stacked))
        return torch.vmap(one)(params, slots.transpose(0, 1).contiguous()).transpose(0, 1)


def _expert(ref: SoftMoE, j: int) -> nn.Sequential:
    """Expert j of `ref` as nn.Sequential(Linear, act, Linear) with the same weights."""
    bias = ref.b1 is not None
    first, second = nn.Linear(ref.dim, ref.expert_hidden, bias=bias), nn.Linear(ref.expert_hidden, ref.dim, bias=bias)
    with torch.no_grad():
        first.weight.copy_(ref.w1[j].t())
        second.weight.copy_(ref.w2[j].t())
        if bias:
            first.bias.copy_(ref.b1[j])
            second.bias.copy_(ref.b2[j])
    act = nn.GELU() if ref.activation == "gelu" else nn.ReLU()
    return nn.Sequential(first, act, second).to(ref.w1.device)


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
            _log(f"{device}: layer {config} n={n}: {', '.join(steps)}")
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
                _log(f"{device}: selective mnist{tag} n={n} batch {batch}")
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
                _log(f"{device}: selective {wide.name}{tag} batch {batch}")
                x = torch.randn(batch, wide.tokens, wide.dim, device=device, dtype=dtype)
                rows += _selective_rows(lambda x, k=None: timing.run_layers(layers, x, k), layers, x,
                                        wide.experts, latency_ks(wide.experts, plan.wide_fractions), device, plan, where)
            del layers
    return rows


# ---- 3. training throughput and the study's own benchmark files ----------------------------
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


def study_benchmarks(root: Path) -> dict:
    """Sum of Snakemake's benchmark `s` (wall seconds) per rule, rule = first folder under root."""
    files = sorted(root.rglob("*.tsv")) if root.is_dir() else []
    rules: dict[str, dict] = {}
    for path in files:
        rel = path.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else path.stem
        entry = rules.setdefault(rule, {"rule": rule, "jobs": 0, "seconds": 0.0})
        entry["jobs"] += 1
        entry["seconds"] += _benchmark_seconds(path)
    return {"root": str(root), "found": bool(files), "rules": sorted(rules.values(), key=lambda r: r["rule"]),
            "total_s": sum(r["seconds"] for r in rules.values())}


def _benchmark_seconds(path: Path) -> float:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    header = lines[0].split("\t") if lines else []
    if "s" not in header or len(lines) < 2:
        raise UserError(f"{path}: not a Snakemake benchmark file (a header with column 's' and at "
                        "least one row); delete it and rerun its rule")
    col = header.index("s")
    try:
        return sum(float(line.split("\t")[col]) for line in lines[1:])
    except (ValueError, IndexError) as err:
        raise UserError(f"{path}: unreadable benchmark row ({err}); delete it and rerun its rule") from err


# ---- 4. workflow overhead ---------------------------------------------------------------------
def _tool(name: str) -> str | None:
    """A path as given, else the tool beside this Python (the venv), else on PATH."""
    if os.sep in name:
        return name if Path(name).exists() else None
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def timed_command(label: str, argv: list[str], cwd: Path, timeout_s: float = 300.0) -> dict:
    """Wall time of one command; failures are recorded (error string), never raised."""
    row = {"command": label, "argv": argv}
    exe = _tool(argv[0])
    if exe is None:
        return {**row, "ok": False, "error": f"{argv[0]}: not found"}
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        done = subprocess.run([exe, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {**row, "ok": False, "seconds": time.perf_counter() - start, "error": str(err)}
    output = (done.stdout + done.stderr).strip()
    row.update(seconds=time.perf_counter() - start, returncode=done.returncode, ok=done.returncode == 0,
               output_tail=output[-400:])
    if done.returncode:
        row["error"] = output[-400:] or f"exit status {done.returncode}"
    return row


def workflow_overhead(root: Path) -> list[dict]:
    """Dry run, then a real no-op `snakemake --cores all` only if nothing is to be done, and `dvc status`."""
    dry = timed_command("snakemake --cores all -n", ["snakemake", "--cores", "all", "-n"], root)
    rows = [dry]
    if dry["ok"] and "Nothing to be done" in dry["output_tail"]:
        rows.append(timed_command("snakemake --cores all", ["snakemake", "--cores", "all"], root))
    else:
        rows.append({"command": "snakemake --cores all", "ok": False,
                     "error": "not run: the dry run did not report 'Nothing to be done' (study not "
                              "finished, or bench itself runs inside the workflow)"})
    rows.append(timed_command("dvc status", ["dvc", "status"], root))
    return rows


# ---- machine, targets, report ---------------------------------------------------------------
def machine(devices: list[str]) -> dict:
    hw = timing.hardware()
    info = {"cpu": hw["cpu"], "cores": hw["cores"], "torch": hw["torch"], "threads": hw["torch_threads"],
            "python": hw["python"], "platform": hw["os"], "devices": devices,
            "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "device_name": {"cpu": hw["cpu"]}}
    if "cuda" in devices:
        info["device_name"]["cuda"] = hw["device"]
        info.update(capability=hw["capability"], gpu_memory_gb=hw["gpu_memory_gb"])
    return info


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


def targets(result: dict) -> list[dict]:
    """Issue 6's targets: figure and verdict on the wall clock (`measured`, `met`) and, where
    measured (CPU device), on the process CPU clock (`cpu_measured`, `cpu_met`)."""
    layer = {(r["device"], r["config"], r["n"], r["formulation"]): r for r in result["layer"]}
    specs = []                     # (target, judge(clock's median key) -> (measured, met))
    for device, config in sorted({(r["device"], r["config"]) for r in result["layer"]}):
        ns = sorted({r["n"] for r in result["layer"] if (r["device"], r["config"]) == (device, config)})
        rows = {(n, f): r for (d, c, n, f), r in layer.items() if (d, c) == (device, config)}

        def fastest(key, rows=rows, ns=ns):
            lost = [n for n in ns if min(rows[(n, f)][key] for f in ("loop", "vmap")) < rows[(n, "ours")][key]]
            return ("lost at n = " + ", ".join(map(str, lost)) if lost else "fastest at every n"), not lost

        def versus_loop(key, rows=rows):
            speedup = rows[(64, "loop")][key] / rows[(64, "ours")][key]
            return f"{speedup:.2f}x", speedup >= 4

        def many_experts(key, rows=rows):
            big, two = rows[(512, "ours")], rows[(2, "ours")]
            ratio = big[key] / two[key]
            return f"{ratio:.2f}x (FLOP ratio {big['flops'] / two['flops']:.2f}x)", ratio <= 2

        specs.append((f"{device}/{config}: ours fastest of ours, loop, vmap at every n", fastest))
        if (64, "loop") in rows:
            specs.append((f"{device}/{config}: ours >= 4x faster than the loop at n=64", versus_loop))
        if (512, "ours") in rows and (2, "ours") in rows:
            specs.append((f"{device}/{config}: ours at n=512 within 2x of n=2", many_experts))
    for r in result["selective"]:
        if r["config"].startswith("wide") and r["batch"] == 100 and r["k"] * 4 == r["n"]:
            def selective(key, r=r):
                ratio = r[key.replace("median_ms", "ratio")]
                return f"{ratio:.3f} (ideal {r['ideal']:.3f}, FLOP ratio {r['flop_ratio']:.3f})", ratio <= 0.35
            specs.append((f"{r['device']}/{r['config']} ({r['layers']} layer(s), hidden {r['hidden']}): "
                          "k=n/4, batch 100 time ratio <= 0.35 of k=n", selective))
    out = []
    for target, judge in specs:
        entry = {"target": target}
        for clock in ("", "cpu_"):
            try:
                entry[f"{clock}measured"], entry[f"{clock}met"] = judge(f"{clock}median_ms")
            except KeyError:       # that clock is not measured on this device
                continue
        out.append(entry)
    return out


def _ms(r: dict, clock: str = "") -> str:
    if f"{clock}median_ms" not in r:
        return "-"
    return f"{r[f'{clock}median_ms']:.3f} [{r[f'{clock}q25_ms']:.3f}, {r[f'{clock}q75_ms']:.3f}]"


def _pair(r: dict, key: str, fmt: str) -> str:
    """'wall / CPU' figures of one key."""
    cpu = r.get(f"cpu_{key}")
    return format(r[key], fmt) + (" / " + format(cpu, fmt) if cpu is not None else "")


def _yes(met: bool | None) -> str:
    return "-" if met is None else "yes" if met else "**no**"


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def markdown(result: dict) -> str:
    m = result["machine"]
    names = ", ".join(f"{d}: {m['device_name'][d]}" for d in m["devices"])
    lines = ["# Benchmarks", "",
             f"{names}; {m['cores']} cores, {m['threads']} torch thread(s), torch {m['torch']}, "
             f"Python {m['python']}; load average at start {m['load_avg_start']}; quick={result['quick']}.", "",
             "Times: median [q25, q75] ms over the repeats after warm-up, wall clock and (CPU device) the "
             "process CPU time. Compared timings are interleaved in one run, so ratios share the machine's "
             "load; on a machine shared with other jobs wall times are inflated and noisy, the CPU time "
             "much less so. 'a / b' cells: wall clock / CPU time.", "", "## Targets", ""]
    lines += _table(["target", "measured (wall)", "met", "measured (CPU time)", "met"],
                    [[t["target"], t["measured"], _yes(t["met"]), t.get("cpu_measured", "-"), _yes(t.get("cpu_met"))]
                     for t in result["targets"]])
    lines += ["## fp32 matmul peak", ""]
    lines += _table(["device", "size", "wall ms", "CPU ms", "GFLOP/s"],
                    [[d, p["size"], _ms(p), _ms(p, "cpu_"), _pair(p, "gflops", ".1f")] for d, p in result["peak"].items()])
    lines += ["## 1. Layer forward + backward at a fixed budget", "",
              "hidden = total hidden // n; GFLOP/s from the FLOPs counted on ours (same math for all); "
              "% peak on the CPU clock where measured (the peak was timed at another moment, so a wall-clock "
              "share is only meaningful on an idle machine).", ""]
    lines += _table(["device", "config", "n", "hidden", "formulation", "wall ms", "CPU ms", "GFLOP/s",
                     "% peak", "x ours"],
                    [[r["device"], r["config"], r["n"], r["hidden"], r["formulation"], _ms(r), _ms(r, "cpu_"),
                      _pair(r, "gflops", ".2f"), f"{r.get('cpu_peak_share', r['peak_share']):.1%}",
                      _pair(r, "ratio_to_ours", ".2f")]
                     for r in result["layer"]])
    lines += ["## 2. Selective inference (Algorithm 1 + keep path)", "",
              "ratio: time / time of the dense forward (k = n) of the same model and batch.", ""]
    lines += _table(["device", "config", "n", "batch", "k", "path", "wall ms", "CPU ms", "ratio", "ideal k/n",
                     "FLOP ratio"],
                    [[r["device"], r["config"], r["n"], r["batch"], r["k"], r["path"], _ms(r), _ms(r, "cpu_"),
                      _pair(r, "ratio", ".3f"), f"{r['ideal']:.3f}", f"{r['flop_ratio']:.3f}"]
                     for r in result["selective"]])
    notes = sorted({(r["config"], r["note"]) for r in result["selective"] if "note" in r})
    lines += [f"- {config}: {note}" for config, note in notes] + [""]
    lines += ["## 3. Training throughput (MNIST model, Adam lr 1e-3, random images)", ""]
    lines += _table(["device", "n", "batch", "step wall ms", "step CPU ms", "samples/s"],
                    [[r["device"], r["n"], r["batch"], _ms(r), _ms(r, "cpu_"), _pair(r, "samples_per_s", ".0f")]
                     for r in result["training"]])
    study = result["study"]
    lines += [f"Snakemake benchmark files under {study['root']}: "
              + ("sum of wall seconds per rule (jobs ran in parallel)." if study["found"] else "none found."), ""]
    if study["found"]:
        lines += _table(["rule", "jobs", "seconds"],
                        [[r["rule"], r["jobs"], f"{r['seconds']:.1f}"] for r in study["rules"]]
                        + [["total", sum(r["jobs"] for r in study["rules"]), f"{study['total_s']:.1f}"]])
    lines += ["## 4. Workflow overhead", ""]
    if result["workflow"] is None:
        lines += ["skipped (--quick)", ""]
    else:
        lines += _table(["command", "seconds", "ok", "error"],
                        [[w["command"], f"{w['seconds']:.2f}" if "seconds" in w else "-", w["ok"],
                          w.get("error", "").replace("\n", " ").replace("|", "/")[:200]] for w in result["workflow"]])
    if result["skipped"]:
        lines += ["## Skipped", ""] + [f"- {s['what']} {s['device']}/{s['config']} n={s['n']}: {s['why']}"
                                        for s in result["skipped"]] + [""]
    return "\n".join(lines) + "\n"


def _code_digest() -> dict:
    """sha256 of the modules timed here, so that a report names the code it measured."""
    here = Path(__file__).parent
    return {name: hashlib.sha256((here / name).read_bytes()).hexdigest()[:16]
            for name in ("layer.py", "models.py", "timing.py", "bench.py")}


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(out_json: Path, out_md: Path, quick: bool) -> None:
    """Run every benchmark (threads already set by the CLI) and write the JSON and Markdown."""
    devices = _devices()
    study = study_benchmarks(Path(layout.BENCHMARKS))
    torch.manual_seed(0)
    result = {"schema": SCHEMA, "quick": quick, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(devices), "code": _code_digest(), "plans": {}, "peak": {}, "layer": [], "selective": [],
              "training": [], "study": study, "workflow": None, "skipped": []}
    for device in devices:
        plan = plan_for(quick, device)
        result["plans"][device] = asdict(plan)
        _log(f"{device}: matmul peak")
        result["peak"][device] = matmul_peak(device, plan.peak_size, plan.warmup, plan.repeats)
        _log(f"{device}: layer forward+backward")
        result["layer"] += layer_bench(plan, device, result["peak"][device], result["skipped"])
        _log(f"{device}: selective inference")
        result["selective"] += selective_bench(plan, device)
        _log(f"{device}: training throughput")
        result["training"] += training_bench(plan, device)
    if (QUICK if quick else FULL).workflow:
        _log("workflow overhead")
        result["workflow"] = workflow_overhead(Path.cwd())
    result["targets"] = targets(result)
    atomic.write_json(out_json, result)
    atomic.write_text(out_md, markdown(result))
    _log(f"wrote {out_json} and {out_md}")
