"""The study on a real Slurm cluster through profiles/slurm (snakemake-executor-plugin-slurm).

Needs a running cluster: `bash scripts/slurm-up.sh` starts a single-node one on localhost
(`.ci/run` does, and stops it with scripts/slurm-down.sh); without one, every test here is
skipped with the reason. Each rule of the tiny study must run as its own Slurm job, be known to
the scheduler as COMPLETED with the profile's settings, a 2-device training must be one job of
two srun-started DDP ranks, and a job that fails must fail the run.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from workflow_helpers import BIN, ROOT, env, make_project, tiny_params

TIMEOUT_S = 420  # per snakemake run; the executor can hang for ever when status queries fail
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) "
                       r"\(log: \S*/slurm_logs/rule_(\w+)/")
TRAIN_RUNTIME_MIN = 7  # SOFTMOE_SLURM_TRAIN_RUNTIME: must reach sbatch as the training time limit


def _slurm_missing() -> str | None:
    """Why the tests cannot run here, or None when a cluster answers."""
    if shutil.which("sbatch") is None:
        return "Slurm is not installed: `bash scripts/slurm-up.sh` installs and starts a local cluster"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%a %t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: the Slurm controller does not answer"
    if p.returncode != 0:
        return (f"no Slurm cluster answers (sinfo: {p.stderr.strip()[:200]}); "
                "start one with `bash scripts/slurm-up.sh`")
    if not re.search(r"^up (idle|mix|alloc)", p.stdout, re.M):
        return f"no usable Slurm node (sinfo: {p.stdout.strip()[:200]})"
    return None


pytestmark = [pytest.mark.slurm, pytest.mark.e2e]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """Skip every test here, with the reason, where no Slurm cluster answers (checked only when
    these tests run: sinfo waits ~10 s for a controller that is not there)."""
    missing = _slurm_missing()
    if missing:
        pytest.skip(missing)


def default_partition() -> str:
    """The cluster's default partition (sinfo marks it with '*')."""
    names = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                           check=True).stdout.split()
    return next(n.rstrip("*") for n in names if n.endswith("*"))


def slurm_env() -> dict:
    """The test's environment plus the profile's variables: the default partition for every
    job and a training time limit that must show up in the scheduler."""
    return dict(env(), SOFTMOE_SLURM_PARTITION=default_partition(),
                SOFTMOE_SLURM_TRAIN_RUNTIME=str(TRAIN_RUNTIME_MIN))


def run_on_slurm(project: Path, *targets: str) -> subprocess.CompletedProcess:
    """snakemake on Slurm through the project's profile. The first status check comes 2 s after
    a submission (the profile waits longer, to spare a real cluster's controller)."""
    cmd = ["timeout", "-k", "15", str(TIMEOUT_S), str(BIN / "snakemake"), *targets,
           "--workflow-profile", "profiles/slurm", "--configfile", "tiny.yaml",
           "--slurm-init-seconds-before-status-checks", "2"]
    proc = subprocess.run(cmd, cwd=project, env=slurm_env(), capture_output=True, text=True)
    ids = [i for rule_ids in submitted(proc).values() for i in rule_ids]
    if proc.returncode != 0 and ids:  # e.g. killed by the timeout: leave no job of it queued
        subprocess.run(["scancel", *ids], capture_output=True)
    return proc


def submitted(proc: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """rule -> the Slurm job ids snakemake reported submitting for it."""
    jobs: dict[str, list[str]] = {}
    for job_id, rule in SUBMITTED.findall(proc.stdout + proc.stderr):
        jobs.setdefault(rule, []).append(job_id)
    return jobs


def scheduler_record(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay for the cluster's MinJobAge)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                         text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def sacct_states(job_ids: list[str]) -> dict[str, str] | None:
    """Job id -> state from the accounting database, or None on a cluster without one."""
    p = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return None
    return dict(line.split("|", 1) for line in p.stdout.split())


def tiny_study(dest: Path, devices: int = 1) -> Path:
    """A copy of the project with the tiny params as tiny.yaml (passed with --configfile);
    devices > 1: each training is a CPU DDP run of that many processes."""
    project = make_project(dest, params=yaml.safe_load((ROOT / "params.yaml").read_text()),
                           dvc=False)
    params = tiny_params()
    params["evaluate"].update(every_k=False, random_seeds=[0, 1])
    params["latency"].update(batch_sizes=[1])
    if devices > 1:
        params["train"].update(accelerator="cpu", devices=devices, strategy="ddp")
    (project / "tiny.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


EVALUATIONS = ["results/eval/mnist5k/n2-s0.csv", "results/eval/mnist5k/n4-s0.csv"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study's evaluations built on Slurm: prepare, 2 trainings (2-process DDP each)
    and 2 evaluations, each one sbatch job. (Every Slurm wave costs tens of seconds of status
    polling; the gathering steps after them are covered by the local workflow tests.)"""
    project = tiny_study(tmp_path_factory.mktemp("slurm") / "study", devices=2)
    proc = run_on_slurm(project, *EVALUATIONS)
    return project, proc


def test_every_job_of_the_study_ran_as_a_completed_slurm_job(study):
    project, proc = study
    assert proc.returncode == 0, explain(proc)
    jobs = submitted(proc)
    assert {rule: len(ids) for rule, ids in jobs.items()} == {
        "prepare": 1, "train": 2, "evaluate": 2}, explain(proc)
    ids = [i for rule_ids in jobs.values() for i in rule_ids]
    assert len(set(ids)) == len(ids)
    for rule, rule_ids in jobs.items():
        for job_id in rule_ids:
            record = scheduler_record(job_id)
            assert record.get("JobState") == "COMPLETED", (rule, job_id, record)
            assert record["ExitCode"] == "0:0"
            assert record["Comment"].startswith(f"rule_{rule}"), record["Comment"]
    trained = {scheduler_record(i)["Comment"] for i in jobs["train"]}
    assert trained == {"rule_train_wildcards_mnist5k_2_0", "rule_train_wildcards_mnist5k_4_0"}
    states = sacct_states(ids)
    if states is not None:  # a cluster with accounting: the database agrees
        assert set(states) == set(ids) and set(states.values()) == {"COMPLETED"}, states
    for n, table in zip((2, 4), EVALUATIONS):  # tiny.yaml reached the jobs
        run = json.loads((project / f"results/train/mnist5k/n{n}-s0/metrics.json").read_text())
        assert run["n"] == n and run["steps"] == 20
        with open(project / table, newline="") as f:
            rows = list(csv.DictReader(f))
        assert {r["n"] for r in rows} == {str(n)}
        assert {r["method"] for r in rows} >= {"all", "alg1", "random"}


def test_a_multi_device_training_is_one_job_of_srun_launched_ranks(study):
    """train.devices: 2 -> one Slurm job with 2 tasks; srun starts them and Lightning takes its
    ranks from Slurm (one DDP world of 2, not two separate runs, not a silent world of 1)."""
    project, proc = study
    assert proc.returncode == 0, explain(proc)
    for job_id in submitted(proc)["train"]:
        record = scheduler_record(job_id)
        assert (record["NumNodes"], record["NumTasks"]) == ("1", "2"), record
    for n in (2, 4):
        log = (project / f"logs/train/mnist5k/n{n}-s0.log").read_text()
        members = sorted(re.findall(r"GLOBAL_RANK: (\d+), MEMBER: (\d+/\d+)", log))
        assert members == [("0", "1/2"), ("1", "2/2")], log[-2000:]


def test_the_profile_settings_reach_sbatch(study):
    """Partition (SOFTMOE_SLURM_PARTITION), the training time limit (SOFTMOE_SLURM_TRAIN_RUNTIME),
    the rules' memory and threads: what the scheduler recorded for each job."""
    _, proc = study
    assert proc.returncode == 0, explain(proc)
    partition = default_partition()
    for rule, rule_ids in submitted(proc).items():
        for job_id in rule_ids:
            record = scheduler_record(job_id)
            assert record["Partition"] == partition
            # threads: 1 in the tiny study, per task (2 tasks per training)
            assert record["NumCPUs"] == ("2" if rule == "train" else "1"), record
            if rule == "train":
                assert record["TimeLimit"] == f"00:{TRAIN_RUNTIME_MIN:02d}:00", record
                assert record["MinMemoryNode"] == "4000M", record  # the rule's mem_mb
                assert "gres/gpu" not in record.get("TRES", ""), record  # MNIST model: no GPU


def test_a_failing_job_fails_the_run(tmp_path):
    """A training job (one process) that exits non-zero inside Slurm (its prepared data is
    corrupt) is reported as FAILED by the scheduler and by snakemake, which exits non-zero."""
    project = tiny_study(tmp_path / "study")
    data = project / "data" / "mnist5k"
    data.mkdir(parents=True)
    (data / "manifest.json").write_text("{not json")
    (data / "train.safetensors").write_bytes(b"corrupt")
    (data / "test.safetensors").write_bytes(b"corrupt")
    proc = run_on_slurm(project, "results/train/mnist5k/n2-s0/metrics.json")
    assert proc.returncode not in (0, 124, 137), explain(proc)  # failed, not killed by timeout
    assert "SLURM status is: 'FAILED'" in proc.stderr + proc.stdout, explain(proc)
    jobs = submitted(proc)
    assert list(jobs) == ["train"] and len(jobs["train"]) == 1, explain(proc)
    assert scheduler_record(jobs["train"][0])["JobState"] == "FAILED"
    log = (project / "logs/train/mnist5k/n2-s0.log").read_text()
    assert "manifest.json" in log, log[-2000:]
    assert not (project / "results/train/mnist5k/n2-s0/metrics.json").exists()
