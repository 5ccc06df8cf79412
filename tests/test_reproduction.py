"""The reproduction check (softmoe.provenance.reproduction): this run's science outputs against dvc.lock and the
git-tracked metrics at git HEAD of a small repository made here, and the CPUs of both sides."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from softmoe.provenance import reproduction


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CLAIMS = {"claims": {"a": {"verdict": "PASS", "ours": "3.1"}, "b": {"verdict": "FAIL", "ours": "x"}}}
METRICS = {"dataset": "toy", "experts": {"n4": {"all": 0.9, "k_n4": {"alg1": 0.6, "random": 0.5}}}}
MACHINE = {"dataset": "toy", "trained_on": {"cpu": ["Intel Xeon (GenuineIntel family 6 model 143; AVX-512)"],
                                            "numerics": ["portable: avx2 pins"]}}


@pytest.fixture
def repo(tmp_path) -> Path:
    """A committed study: a model, an evaluation, a data folder, a timing file, a science table and
    a timing table in dvc.lock; claims, metrics and the machine file in git."""
    root = tmp_path / "repo"
    files = {"results/train/toy/n4-s0/model.safetensors": "weights",
             "results/train/toy/n4-s0/timing.json": '{"wall_time_s": 12.5}',
             "results/eval/toy/n4-s0.csv": "k,accuracy\n1,0.6\n",
             "results/tables/toy/selection.csv": "k,accuracy\n1,0.6\n",
             "results/tables/toy/training_time.csv": "n,wall_time_s\n4,12.5\n",
             "data/toy/train.bin": "images", "data/toy/manifest.json": "{}"}
    for rel, text in files.items():
        _write(root, rel, text)
    outs = [{"path": rel, "hash": "md5", "md5": _md5(root / rel)} for rel in files if not rel.startswith("data/")]
    outs.append({"path": "data/toy", "hash": "md5", "md5": reproduction.dir_md5(root / "data/toy")})
    _write(root, "dvc.lock", yaml.safe_dump({"schema": "2.0", "stages": {"all": {"cmd": "x", "outs": outs}}}))
    _write(root, "metrics/claims.json", json.dumps(CLAIMS))
    _write(root, "metrics/toy.json", json.dumps(METRICS))
    _write(root, "metrics/toy-machine.json", json.dumps(MACHINE))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "-C", str(root), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(root), "commit", "-q", "-m", "study"], check=True)
    here = {**MACHINE, "trained_on": {"cpu": ["AMD EPYC (AuthenticAMD family 25 model 17 stepping 1; AVX-512)"],
                                      "numerics": ["portable: avx2 pins"]}}
    _write(root, "metrics/toy-machine.json", json.dumps(here))     # this run: another host
    return root


def test_same_science_on_another_host_is_identical(repo):
    _write(repo, "results/train/toy/n4-s0/timing.json", '{"wall_time_s": 99.0}')    # timings differ
    _write(repo, "results/tables/toy/training_time.csv", "n,wall_time_s\n4,99.0\n")
    result = reproduction.check(repo, "toy")
    assert result.verdict.startswith("identical: all 6 science outputs") and not result.differ
    assert "Intel Xeon" in result.verdict and "AMD EPYC" in result.verdict
    assert "metrics/claims.json" in result.compared and "data/toy" in result.compared
    assert not any("timing" in p for p in result.compared)


def test_claims_that_differ_are_never_identical(repo):
    changed = json.loads(json.dumps(CLAIMS))
    changed["claims"]["b"]["verdict"] = "PASS"
    _write(repo, "metrics/claims.json", json.dumps(changed))
    result = reproduction.check(repo, "toy")
    assert result.verdict.startswith("differs: 1 of 6") and result.differ == ["metrics/claims.json"]
    assert "claim(s) b differ" in result.claims and "b FAIL → PASS" in result.claims


def test_a_changed_model_and_data_file_are_named(repo):
    _write(repo, "results/train/toy/n4-s0/model.safetensors", "other weights")
    _write(repo, "data/toy/manifest.json", '{"x": 1}')
    result = reproduction.check(repo, "toy")
    assert result.differ == ["data/toy", "results/train/toy/n4-s0/model.safetensors"]
    assert "claims.json: identical" in result.verdict and "headline accuracies within" in result.verdict


def test_missing_outputs_and_missing_lock(repo, tmp_path):
    (repo / "results/eval/toy/n4-s0.csv").unlink()
    result = reproduction.check(repo, "toy")
    assert result.missing == ["results/eval/toy/n4-s0.csv"]
    assert result.verdict.startswith("partial: the 5 science outputs present have the committed bytes")
    assert "1 committed output(s) are not in this run" in result.verdict
    bare = tmp_path / "bare"
    bare.mkdir()
    assert reproduction.check(bare, "toy").verdict == "not possible (no dvc.lock at git HEAD)"


def test_committed_metrics_of_the_older_layout_name_their_cpu(repo):
    old = {**METRICS, "machine": {"cpu": "AMD EPYC"}}
    assert reproduction._cpus(None, old) == "AMD EPYC [code paths not recorded: native]"
    assert reproduction._cpus(None, METRICS) == "not recorded"


def test_dir_md5_is_dvc_s(tmp_path):
    """The folder hash DVC records (dvc-data's own build) equals ours."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    folder = tmp_path / "d"
    for rel, text in {"a.txt": "1", "sub/b.bin": "22", "sub/deeper/c": "333"}.items():
        _write(folder, rel, text)
    fs = LocalFileSystem()
    _, _, tree = build(HashFileDB(fs, str(tmp_path / "odb")), str(folder), fs, "md5")
    assert reproduction.dir_md5(folder) == tree.hash_info.value
