"""config/*.yaml are overlays of params.yaml: merged, they are the paper-scale studies; the
softmoe commands, `softmoe params` (for DVC) and Snakemake's --configfile see the same values."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from workflow_helpers import make_project, snakemake, snakemake_jobs

from softmoe.study import params as P
from softmoe.cli import main

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ["mnist", "cifar10", "cifar100", "imagenet"]
EXPECTED = yaml.safe_load((ROOT / "tests/paper_configs.yaml").read_text())


def _leaves(node, path=()):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path, node


def _imagenet_root(tmp_path: Path) -> Path:
    """An overlay that points datasets.imagenet.root at an (empty) ImageFolder tree."""
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    overlay = tmp_path / "imagenet-root.yaml"
    overlay.write_text(yaml.safe_dump({"datasets": {"imagenet": {"root": str(tmp_path / "imagenet")}}}))
    return overlay


@pytest.mark.parametrize("study", STUDIES)
def test_each_overlay_merged_onto_params_yaml_is_the_complete_file_it_replaces(study, tmp_path):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    overlay = yaml.safe_load((ROOT / f"config/{study}.yaml").read_text())
    merged = P.merged(base, overlay)
    expected = dict(_leaves(EXPECTED[study]))
    got = dict(_leaves(merged))
    changed = {k: got.get(k, "<absent>") for k, v in expected.items() if got.get(k, "<absent>") != v}
    assert changed == {}, (f"config/{study}.yaml merged onto params.yaml differs from the study's values: keep "
                           f"them in the overlay, or change tests/paper_configs.yaml if the study changes too")
    # keys params.yaml gained since the complete files: inherited unchanged, never set by the overlay
    inherited = dict(_leaves(base))
    assert {k: v for k, v in got.items() if k not in expected and inherited.get(k, "<absent>") != v} == {}
    # an overlay states only what differs from params.yaml
    assert [k for k, v in _leaves(overlay) if inherited.get(k, "<absent>") == v] == []
    extra = [_imagenet_root(tmp_path)] if study == "imagenet" else []
    loaded = P.load(ROOT / "params.yaml", [ROOT / f"config/{study}.yaml", *extra])
    assert loaded["dataset"] == study and loaded["train"]["max_steps"] is None


def test_merge_rule_is_snakemakes():
    from snakemake.utils import update_config
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 3, "e": {"f": 1}}
    overlay = {"a": {"c": [3]}, "d": None, "e": 5, "g": {"h": 1}}
    mine = P.merged(base, overlay)
    theirs = yaml.safe_load(yaml.safe_dump(base))
    update_config(theirs, overlay)
    assert mine == theirs == {"a": {"b": 1, "c": [3]}, "d": None, "e": 5, "g": {"h": 1}}
    assert base["a"]["c"] == [1, 2]   # the base is not changed


@pytest.mark.parametrize("text,where,words", [
    ("train: {lrr: 0.1}\n", "over.yaml", ["unknown key 'train.lrr'"]),
    ("train: {lr: -1}\n", "over.yaml", ["key 'train.lr'"]),
    ("dataset: cifar10\nmodel: {kind: astroformer, img_size: 97}\n", "over.yaml", ["model"]),
    ("- a list\n", "over.yaml", ["expected a mapping of keys, got list"]),
    ("train: [unclosed\n", "over.yaml", ["not valid YAML"]),
])
def test_a_bad_overlay_names_its_file_and_key(tmp_path, text, where, words):
    overlay = tmp_path / "over.yaml"
    overlay.write_text(text)
    with pytest.raises(P.ParamsError) as err:
        P.load(ROOT / "params.yaml", [overlay])
    message = str(err.value)
    assert message.startswith(str(tmp_path / where)) and all(w in message for w in words), message


def test_a_missing_overlay_and_an_empty_one(tmp_path):
    with pytest.raises(P.ParamsError, match=r"nope\.yaml: params overlay not found"):
        P.load(ROOT / "params.yaml", [tmp_path / "nope.yaml"])
    (tmp_path / "empty.yaml").write_text("# nothing differs\n")
    assert P.load(ROOT / "params.yaml", [tmp_path / "empty.yaml"]) == P.load(ROOT / "params.yaml")


def test_later_overlays_win_and_an_error_in_the_base_names_the_base(tmp_path):
    (tmp_path / "one.yaml").write_text("seeds: [5]\ntrain: {lr: 0.5}\n")
    (tmp_path / "two.yaml").write_text("train: {lr: 0.25}\n")
    got = P.load(ROOT / "params.yaml", [tmp_path / "one.yaml", tmp_path / "two.yaml"])
    assert (got["seeds"], got["train"]["lr"], got["train"]["optimizer"]) == ([5], 0.25, "adam")
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["evaluate"]["batch_size"] = 0
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    with pytest.raises(P.ParamsError, match=r"base\.yaml: key 'evaluate.batch_size'"):
        P.load(tmp_path / "base.yaml", [tmp_path / "two.yaml"])


def test_softmoe_params_writes_the_merged_file_that_dvc_reads(tmp_path, capsys):
    out = tmp_path / "params.yaml"
    assert main(["params", "--params", str(ROOT / "params.yaml"), "--overlay", str(ROOT / "config/cifar10.yaml"),
                 "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == P.load(ROOT / "params.yaml", [ROOT / "config/cifar10.yaml"])
    assert out.read_text().startswith("# Written by `softmoe params --params ")
    assert main(["validate", "--params", str(out)]) == 0
    (tmp_path / "bad.yaml").write_text("train: {optimizer: sgdd}\n")
    before = out.read_text()
    assert main(["params", "--overlay", str(tmp_path / "bad.yaml"), "--params", str(ROOT / "params.yaml"),
                 "--out", str(out)]) == 2
    assert "bad.yaml: key 'train.optimizer'" in capsys.readouterr().err and out.read_text() == before


@pytest.mark.e2e
def test_snakemake_passes_its_configfiles_as_overlays_to_every_step(tmp_path):
    """`--configfile` overlays reach each softmoe command; a bad one stops Snakemake by name."""
    project = make_project(tmp_path / "p", dvc=False)
    (project / "over.yaml").write_text("evaluate: {batch_size: 50}\n")
    dry = snakemake(project, "-n", "--configfile", "over.yaml")
    commands = re.findall(r"^(?:Shell command: )?(softmoe .*)$", dry.stdout + dry.stderr, flags=re.M)
    assert commands and all("--params params.yaml --overlay over.yaml " in c for c in commands), commands
    plain = [cmd for rule, cmd, _ in snakemake_jobs(project) if rule != "all"]
    assert plain and all("--overlay" not in c and "--params params.yaml " in c for c in plain)
    (project / "over.yaml").write_text("evaluate: {batch_size: 0}\n")
    bad = snakemake(project, "-n", "--configfile", "over.yaml", check=False)
    assert bad.returncode != 0 and "over.yaml: key 'evaluate.batch_size'" in bad.stdout + bad.stderr
