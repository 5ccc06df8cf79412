"""The run's Workflow Run RO-Crate (softmoe.provenance.crate): contents, sha256, bad input, and roc-validator's
workflow-run-crate profile, offline."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import socket

import pytest
import yaml

from softmoe import cli
from softmoe.provenance import crate
from softmoe.base.errors import UserError
from workflow_helpers import ROOT, make_project, tiny_params

OUTPUTS = {"results/tables/mnist5k/selection.csv": b"n,k,acc\n2,1,0.5\n",
           "results/train/mnist5k/n2-s0/model.safetensors": b"\x00\x01weights",
           "results/train/mnist5k/n2-s0/metrics.json": b'{"loss": 0.1}',
           "data/mnist5k/manifest.json": b'{"dataset": "mnist5k"}'}
CLAIMS = b'{"claims": {"a": {"verdict": "PASS"}}}'


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails: the validation must need none."""
    def refuse(*args, **kwargs):
        raise OSError("network use in an offline test")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def fake_run(root):
    """A finished run in miniature: workflow, params, outputs and claims."""
    files = {"Snakefile": b'include: "workflow/rules/a.smk"\n', "workflow/rules/a.smk": b"rule a:\n    output: 'x'\n",
             "src/softmoe/step.py": b"x = 1\n", "metrics/claims.json": CLAIMS, **OUTPUTS,
             "params.yaml": yaml.safe_dump(tiny_params()).encode()}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def write(root, outputs=("results/tables/mnist5k", "results/train/mnist5k", "data/mnist5k"), claims="metrics/claims.json"):
    return crate.write_crate(root / "ro-crate-metadata.json", [root / "params.yaml"], tiny_params(), root / claims,
                             [root / o for o in outputs], [root / "src/softmoe/step.py"])


def graph(path):
    return {e["@id"]: e for e in json.loads(path.read_text())["@graph"]}


def test_crate_lists_run_files_params_software_and_claims(tmp_path, monkeypatch):
    files = fake_run(tmp_path)
    monkeypatch.setenv("SOFTMOE_RUN_START", "2026-12-03 10:00:00 UTC")
    g = graph(write(tmp_path))
    for rel, data in files.items():   # every file with the sha256 of its bytes (report's file_hashes)
        assert g[rel]["sha256"] == hashlib.sha256(data).hexdigest(), rel
        assert g[rel]["contentSize"] == str(len(data))
    run = g["#run"]
    assert run["@type"] == "CreateAction" and run["instrument"] == {"@id": "Snakefile"}
    assert run["startTime"] == "2026-12-03T10:00:00+00:00" and run["endTime"] >= "2026"
    assert {"@id": "metrics/claims.json"} in run["result"]
    assert {"@id": "results/train/mnist5k/"} in run["result"]
    assert g["results/train/mnist5k/"]["hasPart"] == [{"@id": "results/train/mnist5k/n2-s0/metrics.json"},
                                                      {"@id": "results/train/mnist5k/n2-s0/model.safetensors"}]
    objects = [o["@id"] for o in run["object"]]
    assert objects[0] == "params.yaml" and len(objects) == 1 + len(tiny_params())
    assert g["#pv-seeds"]["value"] == "[0]" and g["#pv-dataset"]["value"] == "mnist5k"
    assert g["./"]["mainEntity"] == {"@id": "Snakefile"}
    assert {"@id": "workflow/rules/a.smk"} in g["Snakefile"]["hasPart"]
    torch = importlib.metadata.version("torch")
    assert g[f"https://pypi.org/project/torch/{torch}/"]["version"] == torch
    assert len(json.loads((tmp_path / "ro-crate-metadata.json").read_text())["@context"]) == 2


def test_missing_or_outside_file_is_named(tmp_path):
    fake_run(tmp_path)
    with pytest.raises(UserError, match="results/calibration/mnist5k: not found"):
        write(tmp_path, outputs=("results/tables/mnist5k", "results/calibration/mnist5k"))
    with pytest.raises(UserError, match="metrics/absent.json: not found"):
        write(tmp_path, claims="metrics/absent.json")
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere.csv"
    outside.write_text("x")
    with pytest.raises(UserError, match="outside the crate root"):
        crate.write_crate(tmp_path / "ro-crate-metadata.json", [tmp_path / "params.yaml"], {}, outside, [])
    with pytest.raises(UserError, match="named ro-crate-metadata.json"):
        crate.write_crate(tmp_path / "reports" / "crate.json", [tmp_path / "params.yaml"], {}, outside, [])
    assert not (tmp_path / "ro-crate-metadata.json").exists()   # nothing written


def test_cli_crate_is_a_valid_workflow_run_crate_offline(tmp_path, monkeypatch, capsys, no_network):
    project = make_project(tmp_path / "p", yaml.safe_load((ROOT / "params.yaml").read_text()), dvc=False)
    for rel, data in {**OUTPUTS, "metrics/claims.json": CLAIMS}.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_bytes(data)
    monkeypatch.chdir(project)
    rc = cli.main(["crate", "--params", "params.yaml", "--claims", "metrics/claims.json",
                   "--hash", "data/mnist5k", "--hash", "results/train/mnist5k", "--hash", "results/tables/mnist5k",
                   "--validate"])
    assert rc == 0, capsys.readouterr().err
    assert "valid as workflow-run-crate (offline)" in capsys.readouterr().out
    g = graph(project / "ro-crate-metadata.json")
    assert {"@id": "src/softmoe/provenance/record.py"} in g["Snakefile"]["hasPart"]   # the package code, as the report lists it
    # The check can fail: a crate without its run (the CreateAction) is no Workflow Run Crate.
    doc = json.loads((project / "ro-crate-metadata.json").read_text())
    doc["@graph"] = [e for e in doc["@graph"] if e["@id"] != "#run"]
    for e in doc["@graph"]:
        e.pop("mentions", None)
    (project / "ro-crate-metadata.json").write_text(json.dumps(doc))
    issues = crate.validate(project)
    assert any("instrument" in i or "CreateAction" in i for i in issues), issues
