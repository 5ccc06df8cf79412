"""DVC experiments on the tiny study (docs/sharing.md, "Experiments"): a small grid queued with
`dvc exp run --queue -S`, run two at a time by `dvc queue start -j 2`, compared with
`dvc exp show --md`, and one brought into the workspace with `dvc exp apply`."""
from __future__ import annotations

import json
import time

import pytest
import yaml
from test_remote import add_tracked_inputs
from workflow_helpers import make_project, run, snakemake

pytestmark = pytest.mark.e2e
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@t"]
GRID = [15, 30]  # synthetic.steps: the cheap end of the study (synthetic -> proof -> tables -> report)


def queue_idle(project) -> bool:
    status = run(["dvc", "queue", "status"], project).stdout
    return not any(word in status for word in ("Queued", "Running"))


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The tiny study built and committed, then the grid queued and run two at a time."""
    project = make_project(tmp_path_factory.mktemp("exps"))
    add_tracked_inputs(project)
    snakemake(project)
    run(["git", "add", "-A"], project)
    run(["git", *GIT_ID, "commit", "-qm", "baseline"], project)
    grid = ",".join(map(str, GRID))
    queued = run(["dvc", "exp", "run", "--queue", "-S", f"synthetic.steps={grid}"], project)
    assert queued.stdout.count("Queued experiment") == len(GRID), queued.stdout
    run(["dvc", "queue", "start", "-j", "2"], project)
    deadline = time.time() + 900
    try:
        while not queue_idle(project):
            assert time.time() < deadline, run(["dvc", "queue", "status"], project).stdout
            time.sleep(5)
    finally:
        run(["dvc", "queue", "stop", "--kill"], project, check=False)
    return project


def test_every_point_of_the_grid_succeeded(done):
    status = run(["dvc", "queue", "status"], done).stdout
    assert status.count("Success") == len(GRID), status
    assert "Failed" not in status, status


def test_exp_show_tabulates_params_and_metrics(done):
    table = run(["dvc", "exp", "show", "--md", "--no-pager"], done).stdout
    assert table.startswith("|"), table
    header = table.splitlines()[0]
    assert "synthetic.steps" in header, header
    assert any(key in header for key in json.loads((done / "metrics/mnist5k.json").read_text())), header
    rows = [ln for ln in table.splitlines()[2:] if ln.startswith("|")]
    for steps in GRID:
        assert any(f"| {steps} " in row for row in rows), (steps, table)


def test_exp_apply_brings_one_result_into_the_workspace(done):
    shown = json.loads(run(["dvc", "exp", "show", "--json"], done).stdout)
    exps = {e["name"]: e for rev in shown for e in (rev.get("experiments") or [])
            for e in [e["revs"][0]] if e.get("name")}
    name = next(n for n, e in exps.items()
                if e["data"]["params"]["params.yaml"]["data"]["synthetic"]["steps"] == GRID[-1])
    run(["dvc", "exp", "apply", name], done)
    assert yaml.safe_load((done / "params.yaml").read_text())["synthetic"]["steps"] == GRID[-1]
    status = run(["dvc", "status"], done).stdout
    assert "Data and pipelines are up to date" in status, status
    loss = (done / "results/synthetic").rglob("loss.csv")
    assert all(len(p.read_text().splitlines()) > GRID[-1] for p in loss)
