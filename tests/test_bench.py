"""Benchmark suite: quick run through the CLI, JSON structure, ratios recomputed from the measured
times, the comparison formulations equal to our layer, and the parsing/recording helpers.
No timing thresholds: only relations that hold whatever the machine's speed."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from softmoe import cli
from softmoe.bench import formulations, output, plans, suite, timing, workflow
from softmoe.study import stats
from softmoe.base.errors import UserError
from softmoe.model.layer import SoftMoE

TSV_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _tsv(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TSV_HEADER + "".join(f"{s}\t0:00:01\t1\t1\t1\t1\t0\t0\t10\t1\n" for s in seconds))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `softmoe bench --quick` in a folder holding a small results/benchmarks tree."""
    root = tmp_path_factory.mktemp("bench")
    _tsv(root / "results/benchmarks/train/mnist5k/n2-s0.tsv", [1.5])
    _tsv(root / "results/benchmarks/train/mnist5k/n4-s0.tsv", [2.5])
    _tsv(root / "results/benchmarks/evaluate/n2.tsv", [0.25, 0.5])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv(suite.DEVICES_ENV, "cpu")
        assert cli.main(["bench", "--quick", "--out", "out/b.json", "--md", "out/b.md"]) == 0
    return json.loads((root / "out/b.json").read_text()), (root / "out/b.md").read_text()


def _close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_quick_json_structure(quick):
    result, _ = quick
    assert result["schema"] == suite.SCHEMA and result["quick"] is True
    m = result["machine"]
    assert m["devices"] == ["cpu"] and m["torch_threads"] == 1 and m["torch"] == torch.__version__
    assert m["cores"] >= 1 and m["cpu"] and m["device_name"]["cpu"] == m["cpu"]
    plan = plans.QUICK
    expected = {(c, n, f) for c in plan.layer_shapes for n in plan.layer_experts for f in ("ours", "loop", "vmap")}
    assert {(r["config"], r["n"], r["formulation"]) for r in result["layer"]} == expected
    for r in result["layer"] + result["selective"] + result["training"]:
        assert r["q25_ms"] <= r["median_ms"] <= r["q75_ms"] and 0 < r["min_ms"] <= r["q25_ms"]
        assert 0 < r["cpu_q25_ms"] <= r["cpu_median_ms"] <= r["cpu_q75_ms"]
    assert {r["n"] for r in result["training"]} == set(plan.train_experts)
    assert result["workflow"] is None and result["peak"]["cpu"]["size"] == plan.peak_size


def test_layer_ratios_flops_and_peak_share_come_from_the_times(quick):
    result, _ = quick
    peak = result["peak"]["cpu"]
    assert _close(peak["gflops"], peak["flops"] / peak["median_ms"] / 1e6)
    ours = {(r["config"], r["n"]): r for r in result["layer"] if r["formulation"] == "ours"}
    for r in result["layer"]:
        base = ours[(r["config"], r["n"])]
        assert r["hidden"] == r["total_hidden"] // r["n"]
        # the counted FLOPs of one forward+backward: 14*b*m*d*s routing + 12*b*s*d*h experts
        b, m, d, s, h = r["batch"], r["tokens"], r["dim"], r["n"], r["hidden"]
        assert r["flops"] == base["flops"] == 14 * b * m * d * s + 12 * b * s * d * h
        for clock in ("", "cpu_"):       # wall clock and process CPU time
            assert _close(r[f"{clock}ratio_to_ours"], r[f"{clock}median_ms"] / base[f"{clock}median_ms"])
            assert _close(r[f"{clock}gflops"], r["flops"] / r[f"{clock}median_ms"] / 1e6)
            assert _close(r[f"{clock}peak_share"], r[f"{clock}gflops"] / peak[f"{clock}gflops"])


def test_selective_ratios_come_from_the_times(quick):
    result, _ = quick
    rows = result["selective"]
    groups = {(r["config"], r["n"], r["batch"]) for r in rows}
    assert {(c, b) for c, _, b in groups} == {(c, b) for c in ("mnist", "wide") for b in plans.QUICK.batches}
    for key in groups:
        group = [r for r in rows if (r["config"], r["n"], r["batch"]) == key]
        dense = [r for r in group if r["path"] == "dense"]
        assert len(dense) == 1 and dense[0]["k"] == key[1]
        selective = sorted((r for r in group if r["path"] == "selective"), key=lambda r: r["k"])
        n = key[1]
        assert [r["k"] for r in selective] == sorted(stats.latency_ks(n, plans.QUICK.fractions))
        for r in group:
            for clock in ("", "cpu_"):
                assert _close(r[f"{clock}ratio"], r[f"{clock}median_ms"] / dense[0][f"{clock}median_ms"])
            assert _close(r["ideal"], r["k"] / n)
            assert _close(r["flop_ratio"], r["flops"] / dense[0]["flops"])
        # the keep path runs fewer experts for smaller k: strictly fewer FLOPs
        flops = [r["flops"] for r in selective]
        assert flops == sorted(set(flops)) and selective[-1]["flops"] == dense[0]["flops"]


def test_training_and_study_benchmarks(quick):
    result, _ = quick
    for r in result["training"]:
        for clock in ("", "cpu_"):
            assert _close(r[f"{clock}samples_per_s"], r["batch"] / (r[f"{clock}median_ms"] / 1e3))
    study = result["study"]
    assert study["found"]
    assert {r["rule"]: (r["jobs"], r["seconds"]) for r in study["rules"]} == {"evaluate": (1, 0.75), "train": (2, 4.0)}
    assert study["total_s"] == 4.75


def test_targets_and_markdown_follow_the_json(quick):
    result, md = quick
    assert output.targets(result) == result["targets"]
    [fastest] = result["targets"]
    ours = {r["n"]: r["median_ms"] for r in result["layer"] if r["formulation"] == "ours"}
    others = {}
    for r in result["layer"]:
        if r["formulation"] != "ours":
            others[r["n"]] = min(others.get(r["n"], math.inf), r["median_ms"])
    assert fastest["met"] == all(ours[n] <= others[n] for n in ours)
    assert isinstance(fastest["cpu_met"], bool) and fastest["cpu_measured"]
    assert md.count("| cpu | tiny |") == len(result["layer"])
    assert md.count("| cpu | mnist |") + md.count("| cpu | wide |") == len(result["selective"])
    assert "| train | 2 | 4.0 |" in md and "skipped (--quick)" in md


def _fake_result(times: dict, flops: dict | None = None, selective_ratio: float = 0.3) -> dict:
    flops = flops or {}
    layer = [{"device": "cpu", "config": "c", "n": n, "formulation": f, "median_ms": t, "flops": flops.get(n, 1)}
             for (n, f), t in times.items()]
    selective = [{"device": "cpu", "config": "wide", "batch": 100, "n": 8, "k": 2, "ratio": selective_ratio,
                  "ideal": 0.25, "flop_ratio": 0.27, "layers": 2, "hidden": 64}]
    return {"layer": layer, "selective": selective}


def test_targets_judge_the_issue_thresholds():
    times = {(2, "ours"): 1.0, (2, "loop"): 2.0, (2, "vmap"): 3.0,
             (64, "ours"): 2.0, (64, "loop"): 7.0, (64, "vmap"): 1.5,
             (512, "ours"): 3.0, (512, "loop"): 9.0, (512, "vmap"): 9.0}
    out = {t["target"]: t for t in output.targets(_fake_result(times, {2: 10, 512: 45}, 0.36))}
    fastest = out["cpu/c: ours fastest of ours, loop, vmap at every n"]
    assert not fastest["met"] and fastest["measured"] == "lost at n = 64"
    loop = out["cpu/c: ours >= 4x faster than the loop at n=64"]
    assert loop["measured"] == "3.50x" and not loop["met"]
    big = out["cpu/c: ours at n=512 within 2x of n=2"]
    assert big["measured"] == "3.00x (FLOP ratio 4.50x)" and not big["met"]
    assert not out["cpu/wide (2 layer(s), hidden 64): k=n/4, batch 100 time ratio <= 0.35 of k=n"]["met"]
    assert all("cpu_met" not in t for t in out.values())      # no CPU clock in these rows
    times[(64, "vmap")], times[(64, "loop")], times[(512, "ours")] = 2.5, 8.0, 2.0
    assert all(t["met"] for t in output.targets(_fake_result(times, selective_ratio=0.35)))


@pytest.mark.parametrize("normalize,bias,activation,slots", [
    (True, False, "relu", 1), (False, True, "gelu", 2), (True, True, "gelu", 3)])
def test_comparison_formulations_compute_our_layer(normalize, bias, activation, slots):
    torch.manual_seed(0)
    ours = SoftMoE(6, 4, 5, slots_per_expert=slots, normalize=normalize, bias=bias, activation=activation)
    x = torch.randn(3, 7, 6)
    ours(x).pow(2).sum().backward()
    for cls in (formulations.LoopSoftMoE, formulations.VmapSoftMoE):
        other = cls(ours)
        torch.testing.assert_close(other(x), ours(x))
        other(x).pow(2).sum().backward()
        torch.testing.assert_close(other.phi.grad.reshape(ours.phi.shape), ours.phi.grad)
        if cls is formulations.LoopSoftMoE:
            w1 = torch.stack([e[0].weight.grad.t() for e in other.experts])
        else:
            w1 = other.stacked[other.names.index("0.weight")].grad.transpose(1, 2)
        torch.testing.assert_close(w1, ours.w1.grad)


def test_summaries_counts_and_interleaving():
    stats = timing.summarize_times([0.005, 0.001, 0.003, 0.002, 0.004])
    assert stats["repeats"] == 5
    assert all(math.isclose(stats[k], v) for k, v in {"median_ms": 3, "q25_ms": 2, "q75_ms": 4, "min_ms": 1}.items())
    calls = []
    out = timing.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, "cpu", 2, 3)
    assert calls == ["a", "b"] * 2 + ["a", "b", "b", "a", "a", "b"]     # warm-up, then rotated order
    assert {k: v["repeats"] for k, v in out.items()} == {"a": 3, "b": 3}
    calls.clear()         # over budget: "slow" gets one warm-up and min_repeats timed calls
    out = timing.time_interleaved({"fast": lambda: calls.append("fast"),
                                  "slow": lambda: (calls.append("slow"), time.sleep(0.02))},
                                 "cpu", 3, 9, budget_s=2 * 0.02, min_repeats=2)
    assert calls.count("slow") == 1 + 2 and out["slow"]["repeats"] == 2
    assert calls.count("fast") == 3 + 9 and out["fast"]["repeats"] == 9
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    assert timing.count_flops(lambda: a @ b) == 2 * 3 * 4 * 5


def test_study_benchmarks_reject_a_broken_file(tmp_path):
    assert workflow.study_benchmarks(tmp_path / "missing") == {"root": str(tmp_path / "missing"), "found": False,
                                                           "rules": [], "total_s": 0}
    bad = tmp_path / "train" / "n2.tsv"
    bad.parent.mkdir()
    bad.write_text("not a benchmark\n")
    with pytest.raises(UserError, match="n2.tsv"):
        workflow.study_benchmarks(tmp_path)


def test_commands_record_failures_instead_of_raising(tmp_path):
    missing = workflow.timed_command("nope", ["no-such-tool-softmoe"], tmp_path)
    assert missing["ok"] is False and "not found" in missing["error"]
    failing = workflow.timed_command("exit 3", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path)
    assert failing["ok"] is False and failing["returncode"] == 3 and "boom" in failing["error"]
    assert failing["seconds"] > 0


def test_devices_from_the_environment(monkeypatch):
    monkeypatch.setenv(suite.DEVICES_ENV, "cpu")
    assert suite._devices() == ["cpu"]
    monkeypatch.setenv(suite.DEVICES_ENV, "tpu")
    with pytest.raises(UserError, match=suite.DEVICES_ENV):
        suite._devices()
    if not torch.cuda.is_available():
        monkeypatch.setenv(suite.DEVICES_ENV, "cuda")
        with pytest.raises(UserError, match="cuda"):
            suite._devices()


@pytest.mark.e2e
def test_workflow_overhead_records_errors_outside_a_workflow(tmp_path):
    rows = workflow.workflow_overhead(tmp_path)
    assert [r["command"] for r in rows] == ["snakemake --cores all -n", "snakemake --cores all", "dvc status"]
    assert rows[0]["ok"] is False and rows[0]["error"]          # no Snakefile here
    assert rows[1]["ok"] is False and "not run" in rows[1]["error"]
    assert rows[2]["ok"] is False and rows[2]["error"]          # not a DVC repository


def test_gpu_keep_script_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu_keep.py --device cpu --quick: the GPU script's rows, ratios and report."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    script = [sys.executable, str(root / "benchmarks" / "gpu_keep.py")]
    done = subprocess.run([*script, "--device", "cpu", "--quick", "--out", str(tmp_path / "k")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "k.json").read_text())
    assert result["device"] == "cpu" and result["hardware"]["torch"] == torch.__version__
    rows = result["rows"]
    assert [(r["batch"], r["k"], r["path"]) for r in rows] == [
        (b, k, p) for b in (1, 8) for k, p in ((4, "dense"), (4, "k"), (3, "k"), (2, "k"), (1, "k"))]
    for batch in (1, 8):
        group = [r for r in rows if r["batch"] == batch]
        assert all(_close(r["ratio"], r["median_ms"] / group[0]["median_ms"]) for r in group)
        assert all(_close(r["cpu_ratio"], r["cpu_median_ms"] / group[0]["cpu_median_ms"]) for r in group)
        flops = [r["flop_ratio"] for r in group[1:]]
        assert flops == sorted(flops, reverse=True) and flops[-1] < 0.5
        assert all(r["backend"] == "loop" and r["rel_error_vs_loop"] == 0 for r in group[1:])
        assert all(not r["cuda_graph"] and r["precision"] == "fp32" for r in group)
    assert [r["paper_ratio"] for r in rows if r["batch"] == 1][-1] == pytest.approx(9.96 / 21.50)
    md = (tmp_path / "k.md").read_text()
    assert md.count("| fp32 |") == len(rows) + 2 and "k = n/4 against the floors" in md
    if not torch.cuda.is_available():
        refused = subprocess.run([*script, "--device", "cuda", "--out", str(tmp_path / "c")], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "--device cpu" in refused.stderr
