"""Parallel safety of `snakemake --cores all`: no file is written by two jobs, no job writes
where another one does, each job holds to the threads Snakemake gives it, and two evaluations
can read one trained model at the same time."""
from __future__ import annotations

import collections
import hashlib
import json
import os
import shlex
import stat
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import pandas as pd
import pytest
import yaml
from workflow_helpers import BIN, ROOT, env, make_project, snakemake_job_details, tiny_params

from softmoe import cli

CORES = 3                       # the DAG is built for --cores 3 ...
GRID_THREADS = 4                # ... with params threads: 4, so Snakemake scales every job to 3
# Steps that run torch work; each takes --threads and its rule must pass Snakemake's {threads}.
TORCH_STEPS = {"train", "synthetic", "proof", "evaluate", "calibrate", "hypothesis", "latency", "bench"}
# Timing steps: they reserve every core (threads: workflow.cores) so that no job runs next to
# them, and time with one torch thread (Snakefile comments).
ALONE_STEPS = {"latency", "bench"}
WRITE_FLAGS = ("--out", "--hardware", "--html", "--md")
# Folder arguments read as a whole (report globs every benchmark file): every job writing
# inside must have finished first. (--tables readers read named, declared table files only.)
FOLDER_READS = ("--benchmarks", "--run", "--data")


# ---- Snakemake's DAG of a wider grid ---------------------------------------------------------
@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> list[dict]:
    """Every job of `all` and `bench` on 4 expert counts x 2 seeds and 2 tokenizations."""
    params = tiny_params()
    params["experts"], params["seeds"], params["threads"] = [2, 4, 8, 16], [0, 1], GRID_THREADS
    params["synthetic"]["tokenizations"] = ["5x2", "10x1"]
    project = make_project(tmp_path_factory.mktemp("grid"), params, dvc=False)
    jobs = [j for j in snakemake_job_details(project, targets=("all", "bench"), cores=CORES)
            if j["shellcmd"]]
    for job in jobs:
        job["argv"] = shlex.split(job["shellcmd"])
        job["step"] = job["argv"][job["argv"].index("softmoe") + 1]
    # prepare, train, evaluate, synthetic (4 runs x 2 seeds), proof, tabulate, calibrate, summarize,
    # latency, claims, figures, report, bench, hypothesis (its trained runs), hypotheses, crate
    from softmoe.study import layout, params as P
    from softmoe.workflow import stages
    runs = len(layout.hypothesis_runs(P.Study.of(params)))
    assert len(jobs) == 1 + 8 + 8 + 8 + 2 + len(stages.tabulated()) + 1 + 1 + 1 + 1 + 1 + 1 + 1 + runs + 1 + 1
    return jobs


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it."""
    p, f = PurePosixPath(path), PurePosixPath(folder)
    return p == f or f in p.parents


def _writes(job: dict) -> tuple[set[str], set[str]]:
    """(files and folders the job declares: outputs, logs, benchmark; folders it writes in
    without declaring their content: directory() outputs and command write paths that are not
    outputs, e.g. train's --out, where checkpoints/ and dvclive/ live)."""
    declared = set(job["output"]) | set(job["log"]) | set(job["benchmark"])
    argv = job["argv"]
    written = {_flag(argv, f) for f in WRITE_FLAGS} - {None}
    if ">" in argv:
        written.add(argv[argv.index(">") + 1])
    undeclared = written - declared
    return declared, set(job["directories"]) | undeclared


def test_no_two_jobs_write_the_same_file(grid):
    counts = collections.Counter(path for job in grid for path in _writes(job)[0])
    twice = sorted(path for path, count in counts.items() if count > 1)
    assert not twice, f"written by more than one job: {twice}"


# The project's output folders: every path a job writes lies in one of them, whatever the params
# (dataset names are a closed list and download roots must lie under data/: test_params.py).
OUTPUT_FOLDERS = {"data", "results", "metrics", "reports", "logs"}
ROOT_FILES = {"ro-crate-metadata.json"}     # the run's RO-Crate sits at the crate's root: the project


def test_every_job_writes_inside_the_projects_output_folders(grid):
    outside = sorted(path for job in grid for group in _writes(job) for path in group
                     if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts
                     or (PurePosixPath(path).parts[0] not in OUTPUT_FOLDERS and path not in ROOT_FILES))
    assert not outside, outside


def test_commands_write_only_their_outputs_log_and_own_run_folder(grid):
    for job in grid:
        _, folders = _writes(job)
        argv = job["argv"]
        assert "2>&1" in argv and _flag(argv, ">") in job["log"], (
            f"{job['shellcmd']}: stdout and stderr do not go to the job's own log")
        for folder in folders - set(job["directories"]):
            # an undeclared write path must be a run folder holding the job's declared files
            assert any(_inside(out, folder) and out != folder for out in job["output"]), (
                f"{job['rule']} writes {folder}, which is neither an output nor its run folder")
    train = [j for j in grid if j["rule"] == "train"]
    assert all(_writes(j)[1] == {_flag(j["argv"], "--out")} for j in train)  # checkpoints/, dvclive/


def test_no_job_writes_inside_another_jobs_folder(grid):
    """A folder that one job writes without declaring each file (a directory() output, train's
    and synthetic's run folders) holds nothing that another job writes or owns. Folders shared by
    design hold only declared files with distinct names (results/eval/<ds>/, the tables folder
    of tabulate and latency, logs/), written atomically: test_no_two_jobs_write_the_same_file."""
    clashes = []
    for a in grid:
        _, folders_a = _writes(a)
        for b in grid:
            if b is a:
                continue
            declared_b, folders_b = _writes(b)
            for folder in folders_a:
                for path in declared_b | folders_b:
                    if _inside(path, folder) or _inside(folder, path):
                        clashes.append(f"{a['rule']} owns {folder}; {b['rule']} writes {path}")
    assert not clashes, "\n".join(clashes)


def _ancestors(grid: list[dict]) -> dict[int, set[int]]:
    """Job index -> indices of every job that must finish before it starts (Snakemake's edges:
    an input that is another job's output, directory() outputs included)."""
    producers = {path: i for i, job in enumerate(grid) for path in job["output"]}
    parents = {i: {producers[p] for p in job["input"] if p in producers} for i, job in enumerate(grid)}
    closed: dict[int, set[int]] = {}

    def up(i):
        if i not in closed:
            closed[i] = set()
            for p in parents[i]:
                closed[i] |= {p} | up(p)
        return closed[i]

    return {i: up(i) for i in range(len(grid))}


def test_folder_readers_start_after_every_job_writing_in_the_folder(grid):
    ancestors = _ancestors(grid)
    checked = 0
    for i, reader in enumerate(grid):
        for flag in FOLDER_READS:
            folder = _flag(reader["argv"], flag)
            if folder is None:
                continue
            writers = [j for j, job in enumerate(grid) if j != i
                       and any(_inside(p, folder) for p in set.union(*_writes(job)))]
            assert writers, f"{reader['rule']} {flag} {folder}: no job writes there"
            late = [grid[j]["shellcmd"] for j in writers if j not in ancestors[i]]
            assert not late, f"{reader['rule']} reads {folder} while these may still write it: {late}"
            checked += 1
    assert checked >= 8 + 8 + 2 + 1       # evaluate (--data, --run), proof --run, report --benchmarks


# ---- threads ---------------------------------------------------------------------------------
def _cli_steps_with_threads() -> set[str]:
    sub = next(a for a in cli._parser()._actions if a.dest == "step")
    return {name for name, p in sub.choices.items()
            if any("--threads" in a.option_strings for a in p._actions)}


def test_torch_steps_take_threads_and_rules_pass_snakemakes_threads(grid):
    assert _cli_steps_with_threads() == TORCH_STEPS
    assert {j["step"] for j in grid} >= TORCH_STEPS
    for job in grid:
        given = _flag(job["argv"], "--threads")
        assert job["threads"] <= CORES, job["shellcmd"]
        if job["step"] not in TORCH_STEPS:
            assert given is None and job["threads"] == 1, job["shellcmd"]
        elif job["step"] in ALONE_STEPS:
            assert given == "1" and job["threads"] == CORES, job["shellcmd"]
        else:
            # params threads: 4 scaled to --cores 3 shows the command uses {threads}, not the param
            expected = 1 if job["rule"] == "proof" else min(GRID_THREADS, CORES)
            assert job["threads"] == expected and given == str(job["threads"]), job["shellcmd"]


# The CLI's thread setup, seen from inside each torch step (the step's work is stubbed out).
_THREAD_PROBE = textwrap.dedent("""
    import importlib, json, os, sys, types
    import softmoe
    from softmoe import cli
    N, cores, root = int(sys.argv[1]), os.cpu_count(), sys.argv[2]
    seen = {}

    def probe(step, first):
        def work(*args, **kwargs):
            import numpy, torch  # the real steps import these (and load BLAS) after the setup
            state = {"intra": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
                     "env": {k: os.environ.get(k) for k in cli.THREAD_ENV}}
            if first:
                import threadpoolctl
                from softmoe.base.vision import import_torchvision
                import_torchvision()
                from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
                _set_num_threads_if_needed(num_processes=1)  # what Lightning's DDP launchers call
                state["after_lightning_launch"] = torch.get_num_threads()
                state["pools"] = {i["filepath"].rsplit("/", 1)[-1]: i["num_threads"]
                                  for i in threadpoolctl.threadpool_info()}
            seen[step] = state
        return work

    stubs = {"steps.train": ["train_run"], "steps.synthetic": ["train_synthetic", "proof_check"],
             "steps.evaluate": ["evaluate_run"], "steps.calibration": ["calibrate"], "steps.hypothesis": ["run"],
             "steps.latency": ["measure"],
             "bench.suite": ["run"]}
    for module, names in stubs.items():
        fake = types.ModuleType("softmoe." + module)
        sys.modules[fake.__name__] = fake
        room, _, leaf = module.partition(".")
        setattr(importlib.import_module("softmoe." + room), leaf, fake)
    p = ["--params", root + "/params.yaml"]
    argv = {
        "train": ["train", *p, "--data", "d", "--experts", "2", "--seed", "0", "--out", "o"],
        "synthetic": ["synthetic", *p, "--variance", "5", "--tokens", "5x2", "--experts", "2", "--seed", "0", "--out", "o"],
        "proof": ["proof", *p, "--run", "r", "--out", "o"],
        "evaluate": ["evaluate", *p, "--data", "d", "--run", "r", "--out", "o"],
        "calibrate": ["calibrate", *p, "--data", "d", "--experts", "4", "--seed", "0", "--out", "o"],
        "hypothesis": ["hypothesis", *p, "--name", "authors_recipe", "--data", "d", "--experts", "32",
                       "--seed", "0", "--out", "o"],
        "latency": ["latency", *p, "--out", "o", "--hardware", "h", "--rounds", "r"],
        "bench": ["bench", "--out", "o", "--md", "m"],
    }
    assert "torch" not in sys.modules and "numpy" not in sys.modules  # as in `softmoe <step>`
    for i, (step, args) in enumerate(argv.items()):
        module = {"proof": "steps.synthetic", "calibrate": "steps.calibration",
                  "bench": "bench.suite"}.get(step, "steps." + step)
        name = {"proof": "proof_check", "synthetic": "train_synthetic"}.get(step, stubs[module][0])
        setattr(sys.modules["softmoe." + module], name, probe(step, first=i == 0))
        if i:                                        # undo the previous step's setup
            sys.modules["torch"].set_num_threads(cores)
            for k in cli.THREAD_ENV:
                os.environ.pop(k, None)
        assert cli.main([*args, "--threads", str(N)]) == 0
    print(json.dumps(seen))
""")


@pytest.mark.e2e
def test_cli_holds_every_torch_step_to_its_threads():
    """--threads 1 on a machine with more cores: torch's intra-op and inter-op pools, the BLAS
    and OpenMP libraries, the environment of child processes, and Lightning's DDP launcher
    (which resets torch to cores / processes threads unless OMP_NUM_THREADS is set) all hold."""
    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("one core: every default already equals --threads 1")
    proc = subprocess.run([sys.executable, "-c", _THREAD_PROBE, "1", str(ROOT)], env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(seen) == TORCH_STEPS
    for step, state in seen.items():
        assert state["intra"] == 1, (step, state)
        assert state["env"] == dict.fromkeys(cli.THREAD_ENV, "1"), (step, state)
    first = seen["train"]
    assert first["interop"] == 1, first
    assert first["after_lightning_launch"] == 1, first
    assert first["pools"] and all(n == 1 for n in first["pools"].values()), first["pools"]


# ---- two evaluations of one checkpoint -------------------------------------------------------
def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder below the roots: (inode, size, mtime_ns, sha256 of files). A write,
    an atomic replace, or a file created and deleted again (folder mtime) all show."""
    out = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            out[str(path)] = (st.st_ino, st.st_size, st.st_mtime_ns, digest)
    return out


def _set_writable(roots: tuple[Path, ...], writable: bool) -> None:
    for root in roots:
        for path in [root, *root.rglob("*")]:
            mode = path.stat().st_mode
            bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
            path.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run (n=4, seed 0: 20 steps on 600 images), its data and params file."""
    from softmoe.data import datasets
    from softmoe.steps import train
    from softmoe.study.params import Study

    root = tmp_path_factory.mktemp("shared")
    params = tiny_params()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    study = Study.of(params)
    datasets.prepare(study.datasets, "mnist5k", root / "data")
    train.train_run(study.train, study.model, study.dataset_entry, root / "data", 4, 0, root / "run")
    assert {p.name for p in (root / "run").iterdir()} >= {"model.safetensors", "checkpoints", "dvclive"}
    return root, study


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore:The `srun` command is available")  # Lightning, in `trained`
def test_two_evaluations_of_one_read_only_checkpoint_run_at_once(trained, tmp_path):
    from softmoe.steps import evaluate

    root, study = trained
    data_dir, run_dir = root / "data", root / "run"
    evaluate.evaluate_run(study.evaluate, study.train, study.model, study.dataset_entry, data_dir, run_dir,
                          tmp_path / "sequential.csv")
    model_sha = hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()
    work = tmp_path / "work"                       # one working directory for both, as a project
    work.mkdir()
    softmoe = str(BIN / "softmoe")
    commands = [[softmoe, "evaluate", "--params", str(root / "params.yaml"), "--data", str(data_dir),
                 "--run", str(run_dir), "--out", f"{name}/n4-s0.csv", "--threads", "1"]
                for name in ("a", "b")]
    procs: list[subprocess.Popen] = []
    _set_writable((data_dir, run_dir), False)      # as root this stops nothing: the snapshot does
    try:
        before = _snapshot(data_dir, run_dir)
        for command in commands:
            procs.append(subprocess.Popen(command, cwd=work, env=env(), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        assert procs[0].poll() is None, "the first evaluation ended before the second started"
        results = [p.communicate(timeout=300) for p in procs]
        after = _snapshot(data_dir, run_dir)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        _set_writable((data_dir, run_dir), True)
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-4000:]
    assert after == before, "an evaluation wrote to the run or data folder"
    assert hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest() == model_sha
    files = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    assert files == ["a/n4-s0.csv", "b/n4-s0.csv"], files      # nothing else in the shared cwd
    a, b = ((work / f).read_bytes() for f in files)
    assert a == b == (tmp_path / "sequential.csv").read_bytes()
    assert len(pd.read_csv(work / files[0])) > 0
