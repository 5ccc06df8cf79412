"""What `softmoe bench` measures at which sizes: the layer shapes, the wide (table 3) layers,
the MNIST grid and the repeats of a full, a quick (--quick, tests) and a GPU run."""
from __future__ import annotations

from dataclasses import dataclass, replace

MNIST_GRID = (2, 4, 8, 16, 32, 64, 128, 256, 512)       # the default study's expert grid


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
