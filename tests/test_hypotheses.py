"""Hypotheses tested by runs (docs/hypotheses.md): the params section and its errors, nested
training subsets, one hypothesis run trained and evaluated in process, the comparison with the
grid on constructed tables, and dvc.yaml's list of trained runs."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from softmoe.audit import hypotheses
from softmoe.data import datasets
from softmoe.steps import hypothesis
from softmoe.study import layout, params
from softmoe.workflow import tables
from softmoe.data.datamodule import ImageDataModule
from softmoe.base.errors import UserError
from softmoe.study.params import ParamsError, Study
from softmoe.experiments.e3_calibration import CALIBRATION
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.hypotheses import HYPOTHESES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw() -> dict:
    return copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))


def problem(p: dict) -> str:
    with pytest.raises(ParamsError) as err:
        params.validate(p)
    return str(err.value)


# ---- the params section ---------------------------------------------------------------------------
def test_the_study_holds_its_hypotheses_typed(raw):
    study = Study.of(raw)
    h = study.hypotheses["authors_recipe"]
    assert h.runs_from == "train" and h.train == {"shuffle": False, "max_steps": 3290}
    assert h.quantity.method == "random" and h.quantity.k_frac == 0.25
    assert {"authors_recipe", "renormalized", "epochs_vs_steps"} <= set(study.hypotheses)
    assert any(name.startswith("train_size") for name in study.hypotheses)
    del raw["hypotheses"]                       # optional: a study without any
    params.validate(raw)
    assert Study.of(raw).hypotheses == {}


def test_an_unknown_override_key_is_named_with_the_allowed_keys(raw):
    raw["hypotheses"]["authors_recipe"]["overrides"]["train"]["shufle"] = False
    message = problem(raw)
    assert "hypotheses.authors_recipe.overrides.train.shufle" in message
    assert "not a key of 'train'" in message and "shuffle" in message


def test_an_override_value_the_section_refuses_is_named(raw):
    overrides = raw["hypotheses"]["authors_recipe"]["overrides"]
    overrides["train"]["max_steps"] = 0
    assert "hypotheses.authors_recipe.overrides.train.max_steps" in problem(raw)
    overrides["train"]["max_steps"] = 3290
    overrides["evaluate"] = {"random_seeds": [0]}          # the schema asks for at least 2
    assert "hypotheses.authors_recipe.overrides.evaluate.random_seeds" in problem(raw)


@pytest.mark.parametrize("change, key", [
    (lambda h: h["quantity"].pop("k_frac"), "hypotheses.authors_recipe.quantity"),
    (lambda h: h["overrides"].update(data={"train_subset": 4001}),
     "hypotheses.authors_recipe.overrides.data.train_subset"),
    (lambda h: h["overrides"].update(data={"order": 1}), "hypotheses.authors_recipe.overrides.data"),
    (lambda h: h.update(runs_from="grid"), "hypotheses.authors_recipe.overrides.data"),
    (lambda h: h.update(runs_from="calibration"), "hypotheses.authors_recipe.overrides"),
    (lambda h: h.update(overrides={}), "hypotheses.authors_recipe.overrides"),
])
def test_inconsistent_entries_are_refused_naming_the_key(raw, change, key):
    change(raw["hypotheses"]["authors_recipe"])
    assert f"'{key}" in problem(raw)


def test_a_hypothesis_name_must_be_a_folder_name(raw):
    raw["hypotheses"]["Bad Name"] = raw["hypotheses"].pop("authors_recipe")
    assert "hypotheses.Bad Name" in problem(raw)


# ---- nested subsets ---------------------------------------------------------------------------------
def test_training_subsets_are_nested_prefixes_of_one_fixed_permutation():
    small, large, whole = (datasets.train_order(4000, 0, n) for n in (1000, 2000, None))
    assert len(small) == 1000 and len(large) == 2000 and sorted(whole) == list(range(4000))
    assert np.array_equal(large[:1000], small) and np.array_equal(whole[:2000], large)
    assert np.array_equal(datasets.train_order(4000, 0, 1000), small)          # fixed, not drawn per run
    assert not np.array_equal(datasets.train_order(4000, 1, 1000), small)
    with pytest.raises(UserError, match="train_subset"):
        datasets.train_order(4000, 0, 4001)


def test_the_datamodule_trains_on_the_subset_in_its_fixed_order(raw, mnist5k):
    study = Study.of(raw)
    images, labels = datasets.load_split(mnist5k, "train", study.dataset_entry)
    module = ImageDataModule(study.train, study.model, study.dataset_entry, mnist5k, seed=3,
                             order={"order_seed": 0, "train_subset": 1000})
    module.setup()
    idx = datasets.train_order(len(labels), 0, 1000)
    assert len(module.train_set) == 1000
    assert torch_equal(module.train_set.images, images[idx]) and torch_equal(module.train_set.labels, labels[idx])
    assert len(set(labels[idx].tolist())) == 10                     # mnist5k's split is sorted by class


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


# ---- one run, in process ------------------------------------------------------------------------------
def tiny_study(raw: dict) -> Study:
    raw["evaluate"].update(random_seeds=[0, 1], every_k=False, fractions=[0.5], renormalize=[False])
    raw["hypotheses"] = {"tiny": {
        "description": "a short fixed-order run on a nested subset", "runs_from": "train",
        "datasets": ["mnist5k"], "experts": [2], "seeds": [0],
        "overrides": {"train": {"shuffle": False, "max_steps": 6, "batch_size": 100},
                      "data": {"order_seed": 0, "train_subset": 300}},
        "quantity": {"label": "random k = n/2", "method": "random", "k_frac": 0.5}}}
    params.validate(raw)
    return Study.of(raw)


def test_a_run_trains_with_the_overrides_and_is_evaluated_like_the_grid(raw, mnist5k, tmp_path):
    study = tiny_study(raw)
    out = tmp_path / "tiny" / "n2-s0"
    hypothesis.run(study, "tiny", mnist5k, 2, 0, out)
    rows = pd.read_csv(out / "selection.csv")
    tables.check(out / "selection.csv", HYPOTHESES.name, rows)
    assert set(rows["name"]) == {"tiny"} and {"all", "alg1", "random"} <= set(rows["method"])
    assert (rows["steps"] == 6).all() and (rows["epochs"] == 2).all()       # 300 images = 3 batches
    assert (rows["train_images"] == 300).all() and (rows["full_train_images"] == 4000).all()
    run = json.loads((out / "metrics.json").read_text())
    assert run["steps"] == 6 and run["n"] == 2
    with pytest.raises(UserError, match="not a run of hypothesis tiny"):
        hypothesis.run(study, "tiny", mnist5k, 4, 0, tmp_path / "other")
    with pytest.raises(UserError, match="no such entry"):
        hypothesis.run(study, "absent", mnist5k, 2, 0, tmp_path / "other")


# ---- the comparison, on constructed tables -------------------------------------------------------------
IMAGES = 1000


def selection(rows) -> pd.DataFrame:
    """Selection rows (n, seed, method, k, renormalize, accuracy) with the other columns filled."""
    frame = pd.DataFrame(rows, columns=["n", "seed", "method", "k", "renormalize", "accuracy"])
    frame.insert(0, "dataset", "mnist5k")
    frame["k_frac"] = frame["k"] / frame["n"]
    frame["std"], frame["z"], frame["count"], frame["images"], frame["diff_sd"] = np.nan, np.nan, 10, IMAGES, np.nan
    return frame


GRID = {(32, 0): .80, (32, 1): .82, (64, 0): .84, (64, 1): .86}     # random, k = n/4
SHIFT = {(32, 0): .05, (32, 1): .03, (64, 0): .04, (64, 1): .04}     # the variant's change


def frames(study: Study) -> dict:
    grid = selection([(n, s, "random", n // 4, r, a + (0.02 if r else 0.0))
                      for (n, s), a in GRID.items() for r in (False, True)])
    runs = selection([(n, s, "random", n // 4, False, a + SHIFT[n, s]) for (n, s), a in GRID.items()])
    runs.insert(0, "name", "authors_recipe")
    runs["epochs"], runs["steps"], runs["train_images"], runs["full_train_images"] = 200, 3290, 4000, 4000
    return {SELECTION.name: grid, CALIBRATION.name: None, HYPOTHESES.name: runs}


def authors_recipe_at(raw: dict) -> Study:
    """params.yaml with the authors' recipe run at the (n, seed) pairs of GRID."""
    raw["hypotheses"]["authors_recipe"].update(experts=[32, 64], seeds=[0, 1])
    return Study.of(raw)


def test_the_effect_is_the_paired_mean_with_an_interval_and_the_share_of_the_gap(raw):
    study = authors_recipe_at(raw)
    entry = hypotheses.hypothesis_entry(study.hypotheses["authors_recipe"], study, frames(study))
    assert entry["status"] == "tested" and entry["pairs"] == 4 and entry["missing"] == []
    effect = entry["effect"]
    assert effect["estimate"] == pytest.approx(0.04)
    assert effect["lo"] < 0.04 < effect["hi"] and effect["hi"] - effect["lo"] < 0.2
    # paper, random k = n/4: .666 at n = 32, .704 at n = 64 (softmoe.study.paper)
    gap = np.mean([.666 - .80, .666 - .82, .704 - .84, .704 - .86])
    assert entry["paper"] == pytest.approx((.666 + .704) / 2)
    assert entry["discrepancy"]["estimate"] == pytest.approx(gap)
    share = entry["explained_share"]
    assert share["estimate"] == pytest.approx(0.04 / gap) and share["lo"] < share["estimate"] < share["hi"]
    assert entry["prediction"]["estimate"] == pytest.approx(0.04)
    assert [r["path"] for r in entry["runs"]][0] == "results/hypotheses/mnist5k/authors_recipe/n32-s0"
    assert entry["runs"][0]["grid_path"] == "results/eval/mnist5k/n32-s0.csv"


def test_more_noise_between_seeds_widens_the_interval(raw):
    study = authors_recipe_at(raw)
    tight = hypotheses.hypothesis_entry(study.hypotheses["authors_recipe"], study, frames(study))
    noisy = frames(study)
    noisy[HYPOTHESES.name].loc[0, "accuracy"] += 0.10
    wide = hypotheses.hypothesis_entry(study.hypotheses["authors_recipe"], study, noisy)
    assert (wide["effect"]["hi"] - wide["effect"]["lo"]) > 1.5 * (tight["effect"]["hi"] - tight["effect"]["lo"])
    assert wide["effect"]["estimate"] == pytest.approx(tight["effect"]["estimate"] + 0.10 / 4)


def test_a_grid_hypothesis_reads_the_grids_own_renormalized_rows(raw):
    study = Study.of(raw)
    entry = hypotheses.hypothesis_entry(study.hypotheses["renormalized"], study, frames(study))
    assert entry["status"] == "tested" and entry["pairs"] == 4
    assert entry["effect"]["estimate"] == pytest.approx(0.02)
    assert {"n": 128, "seed": 0} in entry["missing"]          # the constructed grid stops at 64


def test_a_training_subset_is_carried_to_the_papers_scale_by_the_stated_model(raw):
    study = Study.of(raw)
    h = study.hypotheses["train_size_1000"]
    grid = selection([(4, s, "all", 4, False, .93) for s in (0, 1)])
    runs = selection([(4, s, "all", 4, False, .89) for s in (0, 1)])
    runs.insert(0, "name", "train_size_1000")
    runs["epochs"], runs["steps"], runs["train_images"], runs["full_train_images"] = 900, 3500, 1000, 4000
    entry = hypotheses.hypothesis_entry(h, study, {SELECTION.name: grid, CALIBRATION.name: None,
                                                                   HYPOTHESES.name: runs})
    factor = -math.log2(60_000 / 4000) / math.log2(4000 / 1000)
    assert entry["effect"]["estimate"] == pytest.approx(-0.04, abs=1e-6)
    assert entry["prediction"]["estimate"] == pytest.approx(-0.04 * factor, abs=1e-6)
    assert "log2" in entry["prediction"]["model"]
    assert entry["discrepancy"]["estimate"] == pytest.approx(.975 - .93)      # paper, all experts, n = 4
    assert entry["explained_share"]["estimate"] == pytest.approx(-0.04 * factor / (.975 - .93), abs=1e-6)


def test_without_runs_or_on_another_dataset_a_hypothesis_says_why(raw, tmp_path):
    study = Study.of(raw)
    empty = {SELECTION.name: frames(study)[SELECTION.name], CALIBRATION.name: None, HYPOTHESES.name: None}
    entry = hypotheses.hypothesis_entry(study.hypotheses["epochs_vs_steps"], study, empty)
    assert entry["status"] == "not run" and "no (n, seed)" in entry["why"]
    raw["dataset"], raw["model"] = "cifar10", {"kind": "vit"}
    other = Study.of(raw)
    entry = hypotheses.hypothesis_entry(other.hypotheses["train_size_1000"], other, empty)
    assert entry["status"] == "not run" and "cifar10" in entry["why"]


def test_the_step_writes_the_json_from_the_tables(raw, tmp_path):
    study = Study.of(raw)
    folder = tmp_path / "tables"
    folder.mkdir()
    built = frames(study)
    tables.write(folder / "selection.csv", built[SELECTION.name], SELECTION.name)
    tables.write(folder / "hypotheses.csv", built[HYPOTHESES.name], HYPOTHESES.name)
    out = tmp_path / "metrics" / "hypotheses.json"
    hypotheses.write(study, folder, out)
    written = json.loads(out.read_text())
    assert written["dataset"] == "mnist5k" and written["alpha"] == 0.05
    by_name = {h["name"]: h for h in written["hypotheses"]}
    assert set(by_name) == set(study.hypotheses)
    assert by_name["authors_recipe"]["status"] == "tested"
    assert by_name["epochs_vs_steps"]["status"] == "not run"


# ---- dvc.yaml ----------------------------------------------------------------------------------------
def test_dvc_yaml_lists_the_trained_runs_of_params_yaml(raw, tmp_path):
    assert hypotheses._main(["--params", str(ROOT / "params.yaml"), "--check", str(ROOT / "dvc.yaml")]) == 0
    study = Study.of(raw)
    listed = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["hypothesis"]["foreach"]
    assert listed == [{k: r[k] for k in ("name", "n", "seed")} for r in layout.hypothesis_runs(study)]
    raw["hypotheses"]["authors_recipe"]["seeds"] = [0]
    changed = tmp_path / "params.yaml"
    changed.write_text(yaml.safe_dump(raw))
    copy_ = tmp_path / "dvc.yaml"
    copy_.write_text((ROOT / "dvc.yaml").read_text())
    assert hypotheses._main(["--params", str(changed), "--check", str(copy_)]) == 1
    assert hypotheses._main(["--params", str(changed), "--write", str(copy_)]) == 0
    assert hypotheses._main(["--params", str(changed), "--check", str(copy_)]) == 0
