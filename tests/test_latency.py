"""Timing of the selective path: rows, ratios, FLOP counts and the hardware description."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

from softmoe.bench import timing
from softmoe.steps import latency
from softmoe.workflow import tables
from softmoe.model.layer import SoftMoE
from softmoe.model.models import MnistSoftMoE
from softmoe.study.params import Latency, Model, Wide
from softmoe.experiments.e4_latency import LATENCY, LATENCY_ROUNDS

ROOT = Path(__file__).resolve().parents[1]
WIDE = Wide.of({"experts": 4, "hidden_per_expert": 256, "dim": 16, "tokens": 5, "layers": 2, "width": 0.5})
SMALL = Latency.of({"fractions": [1.0, 0.5, 0.25, 0.125], "batch_sizes": [1, 8], "warmup": 1,
                    "repeats": 3, "wide": WIDE.raw})
MODEL = Model.of(yaml.safe_load((ROOT / "params.yaml").read_text())["model"])


def save_run(run: Path, n: int) -> None:
    torch.manual_seed(0)
    meta = {"dataset": "mnist5k", "n": n, "seed": 0, "kind": "mnist", "num_classes": 10,
            "img_size": 28, "in_chans": 1}
    run.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in MnistSoftMoE(n).state_dict().items()},
              str(run / "model.safetensors"), metadata={k: str(v) for k, v in meta.items()})


def test_measure_writes_rows_and_hardware(tmp_path):
    run = tmp_path / "train" / "n4-s0"
    save_run(run, 4)
    out, hardware, rounds = tmp_path / "latency.csv", tmp_path / "hardware.json", tmp_path / "latency_rounds.csv"
    latency.measure(SMALL, MODEL, [run], out, hardware, rounds)
    _check_rounds(pd.read_csv(out), tables.read(tmp_path, LATENCY_ROUNDS.name), repeats=3)
    table = pd.read_csv(out)
    assert list(table.columns) == tables.columns(LATENCY.name)
    # n=4: k = 4, 2, 1 (0.25 and 0.125 both give k=1, counted once), at 2 batch sizes, 2 configs
    assert sorted(set(table["k"])) == [1, 2, 4] and sorted(set(table["batch"])) == [1, 8]
    assert (table["device"] == ("cuda" if torch.cuda.is_available() else "cpu")).all()
    if torch.cuda.is_available():        # fp32 and bf16 rows; the checks below are on fp32
        assert set(table["config"]) == {"mnist5k/n4-s0", "wide", "mnist5k/n4-s0@bf16", "wide@bf16"}
        table = table[~table["config"].str.endswith("@bf16")]
    assert table.groupby("config").size().to_dict() == {"mnist5k/n4-s0": 6, "wide": 6}
    assert (table["repeats"] == 3).all()
    assert (table["q25_ms"] <= table["median_ms"]).all() and (table["median_ms"] <= table["q75_ms"]).all()
    assert (table["median_ms"] > 0).all()
    full = table[table["k"] == 4]
    assert (full["ratio"] == 1.0).all() and (full["flop_ratio"] == 1.0).all()
    assert (table["ideal"] == table["k"] / 4).all()
    for _, rows in table.groupby(["config", "batch"]):
        rows = rows.sort_values("k")
        assert rows["flops"].is_monotonic_increasing and rows["flops"].iloc[0] > 0
        assert (rows["ratio"] == rows["median_ms"] / rows["median_ms"].iloc[-1]).all()
    wide = table[(table["config"] == "wide") & (table["batch"] == 8)].set_index("k")
    # wide experts dominate the FLOPs: the counted ratio is close to the ideal k/n
    assert (wide["flop_ratio"] - wide["ideal"]).abs().max() < 0.1
    info = json.loads(hardware.read_text())
    assert {"cpu", "cores", "torch_threads", "torch", "device", "python", "os"} <= set(info)
    assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads()
    assert isinstance(info["cpu"], str) and info["cpu"]


def _check_rounds(table: pd.DataFrame, rounds: pd.DataFrame, repeats: int) -> None:
    """latency_rounds.csv: one row per timed call (config, batch, k, round), each ratio that
    call's time over the same round's k = n call, and latency.csv's medians are theirs."""
    assert list(rounds.columns) == tables.columns(LATENCY_ROUNDS.name)
    keys = ["config", "n", "k", "batch"]
    assert (rounds.groupby(keys)["round"].apply(sorted).map(tuple) == tuple(range(repeats))).all()
    assert len(rounds) == len(table) * repeats
    full = rounds[rounds["k"] == rounds["n"]].set_index(["config", "batch", "round"])["ms"]
    expect = rounds["ms"] / full.loc[list(zip(rounds["config"], rounds["batch"], rounds["round"]))].to_numpy()
    assert rounds["ratio_to_full"].to_numpy() == pytest.approx(expect.to_numpy(), rel=1e-9)
    assert (rounds.loc[rounds["k"] == rounds["n"], "ratio_to_full"] == 1.0).all()
    medians = rounds.groupby(keys)["ms"].median()
    assert table.set_index(keys)["median_ms"].sort_index().to_numpy() == pytest.approx(
        medians.sort_index().to_numpy(), rel=1e-9)


def test_single_expert_model_is_timed_at_k_equals_n_only(tmp_path):
    """n = 1 (the single-expert control): no k < n, so one row per batch size, ratio 1."""
    run = tmp_path / "train" / "n1-s0"
    save_run(run, 1)
    latency.measure(SMALL, MODEL, [run], tmp_path / "latency.csv", tmp_path / "hardware.json",
                    tmp_path / "latency_rounds.csv")
    table = tables.read(tmp_path, LATENCY.name)
    _check_rounds(table, tables.read(tmp_path, LATENCY_ROUNDS.name), repeats=SMALL.repeats)
    one = table[table["config"].str.startswith("mnist5k/n1-s0")]
    assert set(one["k"]) == {1} and set(one["n"]) == {1} and (one["ratio"] == 1.0).all()
    assert len(one[one["config"] == "mnist5k/n1-s0"]) == len(SMALL.batch_sizes)


def test_time_rounds_keeps_each_round_in_order(monkeypatch):
    """time_rounds: per callable, one (wall, CPU) time per round in round order, whatever order
    the round ran them in; time_interleaved summarizes exactly these."""
    clock = iter(range(1, 100))
    monkeypatch.setattr(timing, "_timed", lambda fn, device: (fn(), (t := next(clock)), t / 10)[1:])
    rounds = timing.time_rounds({"a": lambda: None, "b": lambda: None, "c": lambda: None}, "cpu", 1, 4)
    # round r starts with callable r % 3: a b c | b c a | c a b | a b c
    assert rounds == {"a": ([1, 6, 8, 10], [.1, .6, .8, 1.0]), "b": ([2, 4, 9, 11], [.2, .4, .9, 1.1]),
                      "c": ([3, 5, 7, 12], [.3, .5, .7, 1.2])}
    clock = iter(range(1, 100))
    summary = timing.time_interleaved({"a": lambda: None, "b": lambda: None, "c": lambda: None}, "cpu", 1, 4)
    assert summary["a"]["median_ms"] == 7000 and summary["a"]["cpu_median_ms"] == pytest.approx(700)


def test_trained_layers_reads_the_input_shape():
    layers, shape = latency.trained_layers(MnistSoftMoE(2), {"img_size": 28, "in_chans": 1})
    assert len(layers) == 1 and isinstance(layers[0], SoftMoE) and shape == (4, 196)


def test_wide_layers_follow_the_config():
    layers = latency.wide_layers(WIDE)
    assert len(layers) == 2
    assert all(l.num_experts == 4 and l.expert_hidden == 128 and l.dim == 16 and l.b1 is not None
               and l.activation == "gelu" for l in layers)
    again = latency.wide_layers(WIDE)
    assert torch.equal(layers[1].w1, again[1].w1)                         # seeded
    assert not torch.equal(layers[0].w1, layers[1].w1)


def test_run_layers_chains_and_selects():
    layers = latency.wide_layers(WIDE)
    x = torch.randn(3, 5, 16)
    with torch.inference_mode():
        assert torch.equal(timing.run_layers(layers, x), layers[1](layers[0](x)))
        assert torch.equal(timing.run_layers(layers, x, 2), layers[1](layers[0](x, k=2), k=2))


def test_time_config_rows_per_precision():
    """CPU: fp32 rows only, under the configuration's own name; each k timed and counted."""
    cfg = SMALL.replaced(fractions=[1.0, 0.5], batch_sizes=[2], repeats=2)
    rows, rounds = latency.time_config("wide", latency.wide_layers(WIDE), (5, 16), cfg, torch.device("cpu"))
    assert [(r["config"], r["k"], r["repeats"]) for r in rows] == [("wide", 4, 2), ("wide", 2, 2)]
    assert rows[1]["flops"] < rows[0]["flops"] and rows[0]["ratio"] == 1.0
    assert [(r["k"], r["round"]) for r in rounds] == [(4, 0), (4, 1), (2, 0), (2, 1)]


def test_measure_refuses_a_missing_run(tmp_path):
    from softmoe.base.errors import UserError

    with pytest.raises(UserError, match="model.safetensors"):
        latency.measure(SMALL, MODEL, [tmp_path / "nope"], tmp_path / "l.csv", tmp_path / "h.json",
                        tmp_path / "r.csv")
    assert not (tmp_path / "l.csv").exists() and not (tmp_path / "r.csv").exists()
