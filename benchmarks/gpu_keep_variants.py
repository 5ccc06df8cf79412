"""Where the keep path (Algorithm 2) spends its time on a GPU, and which way of running the kept
experts is fastest: one layer of the study's table 3 (n=8 experts of hidden 768*40, 197 tokens,
GELU, bias), batch 1 and 100, k = 2 and 8, against the dense forward.

Ways to run the kept experts (same outputs, checked against the current one):
  current   rows grouped per expert, one addmm pair per kept expert (one host sync for the counts)
  bmm       the same loop, each expert through torch.bmm / baddbmm (the dense path's kernel)
  linear    the same loop, weights stored (out, in) and run through F.linear
  gather    no loop and no sync: each row's expert weights gathered, one baddbmm pair (copies
            the kept weights: only tried at batch 1)
Then torch.profiler's top CUDA kernels and CPU ops of `current` at batch 1 and 100, k = 2.

    python3 benchmarks/gpu_keep_variants.py        # needs CUDA; src/ on PYTHONPATH
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from softmoe.layer import SoftMoE


def bmm(self, j, z):
    h = torch.baddbmm(self.b1[j].view(1, 1, -1), z.unsqueeze(0), self.w1[j].unsqueeze(0))
    return torch.baddbmm(self.b2[j].view(1, 1, -1), self.act(h), self.w2[j].unsqueeze(0))[0]


def linear(self, j, z):
    return F.linear(self.act(F.linear(z, self.w1t[j], self.b1[j])), self.w2t[j], self.b2[j])


def gather(self, slots, expert):
    h = torch.baddbmm(self.b1[expert].unsqueeze(1), slots, self.w1[expert])
    return torch.baddbmm(self.b2[expert].unsqueeze(1), self.act(h), self.w2[expert])


# name -> (method of SoftMoE replaced, replacement); bmm and linear keep the grouping loop of
# SoftMoE._run_grouped and replace the per-expert function it calls.
VARIANTS = {"current": (None, None), "bmm": ("_expert", bmm), "linear": ("_expert", linear),
            "gather": ("_run_grouped", gather)}
ORIGINAL = {name: getattr(SoftMoE, name) for name in ("_expert", "_run_grouped")}


def use(variant: str) -> None:
    """Put SoftMoE back as it is, then swap in `variant`."""
    for name, method in ORIGINAL.items():
        setattr(SoftMoE, name, method)
    name, method = VARIANTS[variant]
    if name:
        setattr(SoftMoE, name, method)


def median_ms(fn, warmup=10, repeats=30) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    layer = SoftMoE(768, 8, 768 * 40, bias=True, activation="gelu", phi_init="lecun").cuda().eval()
    layer.w1t = layer.w1.detach().transpose(1, 2).contiguous()
    layer.w2t = layer.w2.detach().transpose(1, 2).contiguous()
    weights_gb = 2 * layer.w1.numel() * 4 / 1e9
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; expert weights {weights_gb:.2f} GB")
    rows = []
    with torch.inference_mode():
        for batch in (1, 100):
            x = torch.randn(batch, 197, 768, device="cuda")
            dense = median_ms(lambda: layer(x))
            rows.append((batch, "-", "dense", dense, 1.0))
            for k in (2, 8):
                use("current")
                want = layer(x, k=k)
                for name in VARIANTS:
                    if name == "gather" and batch > 1:
                        continue
                    use(name)
                    err = ((layer(x, k=k) - want).norm() / want.norm()).item()
                    ms = median_ms(lambda: layer(x, k=k))
                    rows.append((batch, k, f"{name} (rel err {err:.1e})", ms, ms / dense))
        use("current")
        print(f"{'batch':>5} {'k':>3} {'variant':<28} {'ms':>8} {'/dense':>7}")
        for batch, k, name, ms, ratio in rows:
            print(f"{batch:>5} {k!s:>3} {name:<28} {ms:8.3f} {ratio:7.3f}")
        from torch.profiler import ProfilerActivity, profile
        for batch in (1, 100):
            x = torch.randn(batch, 197, 768, device="cuda")
            for _ in range(5):
                layer(x, k=2)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    layer(x, k=2)
                torch.cuda.synchronize()
            print(f"\n== profile: current, batch {batch}, k=2, 10 calls")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
