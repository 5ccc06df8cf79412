"""A tiny copy of the study in a temporary folder, for the end-to-end workflow tests."""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Reports/benchmarks-gpu.json is a committed input of the claims step (the GPU measurements).
PROJECT_FILES = ["Snakefile", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "workflow", "profiles", "src", "config",
                 "reports/benchmarks-gpu.json"]


def tiny_params() -> dict:
    """params.yaml shrunk to seconds: two expert counts, a few steps, small evaluation."""
    p = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p["experts"] = [2, 4]
    p["seeds"] = [0]
    p["calibration"].update(experts=[4], epochs=1)
    p["datasets"]["mnist5k"].update(train_size=600, test_size=200)
    p["train"].update(max_steps=20, batch_size=64)
    p["evaluate"].update(random_seeds=[0, 1, 2], batch_size=200)
    p["synthetic"].update(experts=[1, 2], tokenizations=["5x2"], variances=[5], steps=15, batch_size=256,
                        seeds=[0, 1])
    p["latency"].update(warmup=1, repeats=3, batch_sizes=[1, 4],
                        wide=dict(experts=4, hidden_per_expert=64, dim=32, tokens=8, layers=1, width=1.0))
    for h in p.get("hypotheses", {}).values():    # the same runs as dvc.yaml lists, in seconds
        over = h.get("overrides", {})
        if over.get("train", {}).get("max_steps"):
            over["train"]["max_steps"] = 20
        if "train_subset" in over.get("data", {}):
            over["data"]["train_subset"] //= 8
        if h["runs_from"] == "calibration":
            over["train"]["epochs"] = p["calibration"]["epochs"]
    return p


def env() -> dict:
    e = dict(os.environ, DVC_NO_ANALYTICS="1", DVC_STUDIO_OFFLINE="1", PYTHONHASHSEED="0")
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    return e


def make_project(dest: Path, params: dict | None = None, dvc: bool = True) -> Path:
    """Copy the workflow files into `dest`, write tiny params, and init git + DVC there."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    if dvc:
        run(["git", "init", "-q"], dest)
        run(["dvc", "init", "-q"], dest)
        run(["dvc", "config", "core.analytics", "false"], dest)
        run(["git", "add", "-A"], dest)
        run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny study"], dest)
    return dest


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(["timeout", "-k", "10", str(timeout), *cmd], cwd=cwd, env=env(),
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "snakemake"), "--cores", "2", *args], cwd, check=check)


def file_hashes(root: Path, folders=("results", "metrics", "data"), skip=()) -> dict[str, str]:
    """sha256 of every file under the given folders, except paths containing a `skip` word."""
    out = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            rel = str(path.relative_to(root))
            if path.is_file() and not any(word in rel for word in skip):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# Snakemake's own DAG of a project (pinned Snakemake 9.27: uses the API's workflow object).
_SNAKEMAKE_JOB_DETAILS = """
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import DAGSettings, OutputSettings, ResourceSettings
targets, cores = json.loads('{args}')
with SnakemakeApi(OutputSettings()) as api:
    wapi = api.workflow(resource_settings=ResourceSettings(cores=cores),
                        snakefile=Path("Snakefile").resolve(), workdir=Path(".").resolve())
    wf = wapi.dag(dag_settings=DAGSettings(targets=set(targets), forceall=True)).workflow_api._workflow
    wf._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
    wf._build_dag()
    print(json.dumps([dict(rule=j.rule.name, shellcmd=j.shellcmd, threads=j.threads,
                           input=[str(f) for f in j.input], output=[str(f) for f in j.output],
                           directories=[str(f) for f in j.output if f.is_directory],
                           log=[str(f) for f in j.log], benchmark=[str(j.benchmark)] if j.benchmark else [])
                      for j in wf.dag.jobs]))
"""


def snakemake_job_details(project: Path, targets=("all",), cores: int = 2) -> list[dict]:
    """Every job Snakemake would run from scratch for `targets` with `--cores cores`, as a dict:
    rule, shellcmd, threads (as Snakemake passes them, i.e. at most `cores`), input, output,
    directories (the directory() outputs), log and benchmark (lists of paths)."""
    import json
    script = _SNAKEMAKE_JOB_DETAILS.replace("{args}", json.dumps([list(targets), cores]))
    proc = run([sys.executable, "-c", script], project)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def snakemake_jobs(project: Path) -> list[tuple[str, str, list[str]]]:
    """(rule, shell command, outputs) of every job Snakemake would run from scratch."""
    return [(j["rule"], j["shellcmd"], j["output"]) for j in snakemake_job_details(project)]
