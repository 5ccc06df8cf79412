"""Snakemake and DVC over the same steps: same commands, outputs, params keys and code deps;
the tiny study end to end, no-op reruns, selective reruns, dvc repro agreement, bad params."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
import yaml
from workflow_helpers import BIN, env, file_hashes, make_project, run, snakemake, snakemake_jobs, tiny_params

from softmoe.workflow import stages

LOG_REDIRECT = re.compile(r"\s*>\s*\S+\s+2>&1\s*$")
# Outputs that hold timings or machine facts (or are markers), left out of bit-for-bit comparisons
# (softmoe.provenance.reproduction.NOT_SCIENCE): claims.json and discrepancies.csv judge and compare the
# latency timings too. Each training's metrics.json and training.csv carry none (timing.json does).
TIMING = ("latency", "hardware.json", "timing.json", "training_time.csv", "-machine.json", "dvclive",
          "checkpoints", "params.valid", "benchmarks", ".snakemake_timestamp", "claims.json", "discrepancies.csv")


def snakemake_commands(project) -> dict[str, set[str]]:
    """command (without its log redirection) -> outputs, for every job of Snakemake's DAG."""
    return {LOG_REDIRECT.sub("", " ".join(cmd.split())): set(outs)
            for rule, cmd, outs in snakemake_jobs(project) if rule != "all"}


def dvc_stages(project):
    from dvc.repo import Repo
    with Repo(str(project)) as repo:
        for st in repo.index.stages:
            params = {k for d in st.deps if hasattr(d, "params") for k in (d.params or [])}
            deps = {str(d.def_path) for d in st.deps if not hasattr(d, "params")}
            yield st.addressing, " ".join(st.cmd.split()), {str(o.def_path) for o in st.outs}, params, deps


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("engines"))


def test_both_engines_run_the_same_commands_with_the_same_outputs(fresh):
    smk = snakemake_commands(fresh)
    dvc = {cmd: outs for _, cmd, outs, _, _ in dvc_stages(fresh) if not cmd.startswith("softmoe validate")}
    assert set(smk) == set(dvc), (set(smk) ^ set(dvc))
    for cmd, outs in smk.items():
        assert outs == dvc[cmd], cmd
    # prepare, train, synthetic, proof, evaluate, calibrate, tabulate, summarize, latency, claims, figures, report,
    # hypothesis (the trained runs dvc.yaml lists), hypotheses, crate
    runs = len(yaml.safe_load((fresh / "dvc.yaml").read_text())["stages"]["hypothesis"]["foreach"])
    assert len(dvc) == 1 + 2 + 4 + 1 + 2 + 1 + len(stages.tabulated()) + 1 + 1 + 1 + 1 + 1 + runs + 1 + 1


def test_params_keys_and_code_deps_follow_the_stage_table(fresh):
    params = tiny_params()
    for name, _, _, keys, deps in dvc_stages(fresh):
        step = name.split(":")[-1].split("@")[0]
        if step == "validate":
            continue
        assert keys == set(stages.param_keys(step, params)), name
        assert set(stages.code(step)) == {d for d in deps if d.startswith("src/")}, name


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study built once by Snakemake (git + DVC initialised, as a user's clone)."""
    project = make_project(tmp_path_factory.mktemp("study"))
    proc = snakemake(project)
    return project, proc


@pytest.mark.e2e
def test_snakemake_builds_every_output_and_commits_to_dvc(study):
    project, _ = study
    for rel in ["reports/report.html", "reports/report.md", "metrics/mnist5k.json",
                "results/tables/mnist5k/selection.csv", "results/tables/mnist5k/latency.csv",
                "results/synthetic/v5/5x2/proof.csv", "results/train/mnist5k/n4-s0/model.safetensors",
                "metrics/claims.json", "results/tables/mnist5k/discrepancies.csv",
                "results/calibration/mnist5k/n4-s0/selection.csv"]:
        assert (project / rel).is_file() and (project / rel).stat().st_size > 0, rel
    assert list((project / "reports/figures").glob("*.png"))
    assert (project / "dvc.lock").is_file()
    status = run(["dvc", "status"], project).stdout
    assert "up to date" in status, status


@pytest.mark.e2e
def test_second_run_is_a_no_op(study):
    project, _ = study
    proc = snakemake(project, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_a_param_change_reruns_only_what_reads_it(study, tmp_path):
    project, _ = study
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["random_seeds"] = [0, 1, 2, 3]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = snakemake(project, "-n", "--quiet", "rules").stdout
        ran = {line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0].isidentifier()}
        assert "evaluate" in ran and "report" in ran
        assert not ran & {"prepare", "train", "synthetic", "proof", "latency"}, out
        dvc = run(["dvc", "status"], project).stdout
        assert "evaluate@" in dvc, dvc
        assert not re.search(r"^(prepare|train@\S+|synthetic@\S+|latency):", dvc, re.M), dvc
    finally:
        (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))


@pytest.mark.e2e
def test_bad_params_stop_both_engines_before_any_job_and_keep_results(study):
    project, _ = study
    before = file_hashes(project)
    good = (project / "params.yaml").read_text()
    params = yaml.safe_load(good)
    params["train"]["lr"] = "fast"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        smk = snakemake(project, check=False)
        assert smk.returncode != 0 and "train.lr" in smk.stdout + smk.stderr
        dvc = run(["dvc", "repro"], project, check=False)
        assert dvc.returncode != 0 and "train.lr" in dvc.stdout + dvc.stderr
    finally:
        (project / "params.yaml").write_text(good)
    after = file_hashes(project)
    assert {k: v for k, v in after.items() if k != "results/params.valid"} == \
        {k: v for k, v in before.items() if k != "results/params.valid"}


@pytest.mark.e2e
def test_dvc_repro_agrees_with_snakemake_bit_for_bit(study, tmp_path):
    """Same params and seeds on CPU => identical outputs, whichever engine ran them (timings aside)."""
    project, _ = study
    other = make_project(tmp_path / "dvc")
    run(["dvc", "repro"], other)
    ours, theirs = file_hashes(project, skip=TIMING), file_hashes(other, skip=TIMING)
    assert ours.keys() == theirs.keys()
    assert ours == theirs
    assert run(["dvc", "status"], other).stdout.strip().endswith("up to date.")


@pytest.mark.e2e
def test_kill_9_mid_study_then_rerun_resumes_and_matches(study, tmp_path):
    """kill -9 the whole Snakemake run once a training has checkpointed; `snakemake --unlock`
    and a rerun finish the study with results identical to an uninterrupted run."""
    project, _ = study
    killed = make_project(tmp_path / "killed")
    proc = subprocess.Popen([str(BIN / "snakemake"), "--cores", "2"], cwd=killed, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not list(killed.glob("results/train/*/*/checkpoints/last.ckpt")) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    snakemake(killed, "--unlock")
    snakemake(killed)
    assert file_hashes(killed, skip=TIMING) == file_hashes(project, skip=TIMING)
