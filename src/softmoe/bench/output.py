"""The verdicts and the Markdown of `softmoe bench`: issue 6's targets judged on the result,
and reports/benchmarks.md (benchmarks/README.md explains both)."""
from __future__ import annotations

from softmoe.study.layout import WIDE


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
        if r["config"].startswith(WIDE) and r["batch"] == 100 and r["k"] * 4 == r["n"]:
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
             f"{names}; {m['cores']} cores, {m['torch_threads']} torch thread(s), torch {m['torch']}, "
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
