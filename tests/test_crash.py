"""kill -9 during training, evaluation and the report, under `dvc repro` and Snakemake: the rerun
completes, resumes training from its checkpoint, reruns the killed job (a partial output is never
taken as done), ends with the results of an uninterrupted run, and leaves no temporary file of an
atomic write behind. (tests/test_workflow.py kills a whole Snakemake run during training.)

Two ways to kill: from outside, once the job's `softmoe` process is seen running (as a person or a
scheduler would), and from inside at an exact file operation of a `softmoe` process (a
sitecustomize.py on PYTHONPATH, below), to hit the worst moments: between the two files of a step,
after its last file, and while a checkpoint is written."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from test_workflow import TIMING
from workflow_helpers import BIN, env, file_hashes, make_project, run, snakemake

# Crash points, read by every Python process of a run (only `softmoe` processes act on them).
CRASH_HOOK = '''\
"""Test-only (tests/test_crash.py): SIGKILL the run at a file operation of a `softmoe` process.

CRASH_AT: ';'-separated points.
  open:NAME        NAME opened for writing under its final name, i.e. written in place; the open is
                   done first, so the killed process leaves the file it would have left (empty).
  rename:NAME[:K]  just before the K-th (default 1st) rename onto NAME: the temporary file is
                   complete, NAME not yet replaced.
  renamed:NAME     just after the first rename onto NAME.
CRASH_PGID: the process group to kill (the whole run); else only this process."""
import os
import signal
import sys


def _die():
    if os.environ.get("CRASH_PGID"):
        os.killpg(int(os.environ["CRASH_PGID"]), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _ours():
    return bool(sys.argv) and os.path.basename(sys.argv[0]) == "softmoe"


_POINTS = [p.split(":") for p in os.environ.get("CRASH_AT", "").split(";") if p]
_OPEN = {p[1] for p in _POINTS if p[0] == "open"}
_RENAME = {p[1]: int(p[2]) if len(p) > 2 else 1 for p in _POINTS if p[0] == "rename"}
_RENAMED = {p[1] for p in _POINTS if p[0] == "renamed"}
_COUNT = {}
_BUSY = []


def _audit(event, args):
    if event != "open" or _BUSY or not _ours():
        return
    path, _, flags = args
    if isinstance(path, int) or not flags & (os.O_WRONLY | os.O_RDWR):
        return
    if os.path.basename(os.fsdecode(path)) in _OPEN:
        _BUSY.append(1)
        os.close(os.open(path, flags, 0o666))
        _die()


def _wrap(rename):
    def wrapped(src, dst, *args, **kwargs):
        name = os.path.basename(os.fsdecode(dst)) if _ours() else None
        if name in _RENAME:
            _COUNT[name] = _COUNT.get(name, 0) + 1
            if _COUNT[name] == _RENAME[name]:
                _die()
        result = rename(src, dst, *args, **kwargs)
        if name in _RENAMED:
            _die()
        return result
    return wrapped


if _POINTS:
    sys.addaudithook(_audit)
    os.replace, os.rename = _wrap(os.replace), _wrap(os.rename)
'''

# atomic.py's temporary files: `.<name>.<8 random characters>.tmp` next to the target.
TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


@pytest.fixture(scope="module", autouse=True)
def no_slurm_query(tmp_path_factory):
    """At every start, Snakemake's Slurm executor plugin runs `scontrol show config` (10 s
    timeout): where Slurm is installed but no controller is up, each start waits ~9 s. These runs
    are local; a stand-in `scontrol` fails at once."""
    if not shutil.which("scontrol"):
        yield
        return
    folder = tmp_path_factory.mktemp("bin")
    (folder / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (folder / "scontrol").chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny study built once by Snakemake without interruption (git + DVC, dvc.lock committed)."""
    project = make_project(tmp_path_factory.mktemp("reference"))
    snakemake(project)
    return project


@pytest.fixture(scope="module")
def crash_hook(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crash_hook")
    (folder / "sitecustomize.py").write_text(CRASH_HOOK)
    return folder


def copy_study(reference: Path, dest: Path, uncommitted: tuple[str, ...] = ()) -> Path:
    """A finished study to rerun steps of (mtimes, .snakemake metadata, dvc.lock, DVC cache).

    `uncommitted` outputs are taken out of DVC's cache (and its run cache emptied), as after a
    killed first run: `dvc repro` then runs their stage again instead of restoring the committed
    files ("Stage ... is cached - skipping run, checking out outputs")."""
    shutil.copytree(reference, dest, symlinks=True)
    if uncommitted:
        import yaml
        lock = yaml.safe_load((dest / "dvc.lock").read_text())
        md5 = {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
        for path in uncommitted:
            (dest / ".dvc/cache/files/md5" / md5[path][:2] / md5[path][2:]).unlink()
        shutil.rmtree(dest / ".dvc/cache/runs")
    return dest


def start(cmd: list[str], cwd: Path, log: Path, **extra: str) -> subprocess.Popen:
    """Start a run in its own process group (killed as a whole), output to `log`."""
    e = dict(env(), **extra)
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=e, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def start_with_crash(cmd: list[str], cwd: Path, log: Path, hook: Path, crash_at: str) -> subprocess.Popen:
    """Start a run that kills its own process group at the `crash_at` points (CRASH_HOOK)."""
    # The group id is the leader's pid, known only once started: a shell exports it first.
    script = 'export CRASH_PGID=$$; exec "$@"'
    return start(["bash", "-c", script, "bash", *cmd], cwd, log, PYTHONPATH=str(hook), CRASH_AT=crash_at)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def wait_for(found, proc: subprocess.Popen, what: str, timeout: float = 600):
    """Poll `found()` every 50 ms until it returns something true; fail if the run ends first."""
    deadline = time.time() + timeout
    while True:
        value = found()
        if value:
            return value
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


def softmoe_job(proc: subprocess.Popen, step: str):
    """The running `softmoe <step>` process under `proc`, if any."""
    import psutil
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if step in cmd and any(Path(arg).name == "softmoe" for arg in cmd[:cmd.index(step)]):
            return child
    return None


def kill_while_running(proc: subprocess.Popen, step: str, after_s: float) -> list[str]:
    """kill -9 the run's whole process group once its `softmoe <step>` job has run `after_s`
    seconds (past the imports, into the work); return that job's command line."""
    job = wait_for(lambda: softmoe_job(proc, step), proc, f"softmoe {step} job")
    cmd = job.cmdline()
    while time.time() < job.create_time() + after_s and job.is_running():
        time.sleep(0.05)
    assert job.is_running(), f"softmoe {step} ended within {after_s} s; kill it sooner"
    kill_group(proc)
    return cmd


def leftover_temps(project: Path) -> list[str]:
    return sorted(str(p.relative_to(project)) for folder in ("results", "metrics", "reports", "data")
                  for p in (project / folder).rglob(".*.tmp") if TEMP.fullmatch(p.name))


def assert_report_complete(project: Path, reference: Path) -> None:
    """Both report files whole: every section of the uninterrupted study's report, the HTML closed."""
    def sections(root):
        return re.findall(r"^## .*$", (root / "reports/report.md").read_text(), re.M)
    assert sections(project) == sections(reference)
    assert (project / "reports/report.html").read_text().rstrip().endswith("</html>")


def assert_finished_like(project: Path, reference: Path) -> None:
    """Every result as in the uninterrupted study, a complete report, no temporary file left."""
    assert file_hashes(project, skip=TIMING) == file_hashes(reference, skip=TIMING)
    assert_report_complete(project, reference)
    assert leftover_temps(project) == []


def dvc_up_to_date(project: Path) -> bool:
    return run(["dvc", "status"], project).stdout.strip().endswith("up to date.")


def output_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


# ---- training --------------------------------------------------------------------------------
@pytest.mark.e2e
def test_dvc_repro_killed_mid_training_resumes_and_matches(reference, tmp_path):
    """kill -9 of `dvc repro` (DVC and its stage) once a training has checkpointed: DVC's lock
    still names the killed process, yet a plain `dvc repro` finishes (DVC drops entries of dead
    processes itself), the training resumes from its checkpoint, and the results equal those of
    the uninterrupted study."""
    project = make_project(tmp_path / "study")
    proc = start([str(BIN / "dvc"), "repro"], project, tmp_path / "killed.log")
    ckpt = wait_for(lambda: next(project.glob("results/train/*/*/checkpoints/last.ckpt"), None),
                    proc, "training checkpoint")
    kill_group(proc)
    run_dir = ckpt.parents[1]
    assert not (run_dir / "model.safetensors").exists(), "the training ended before the kill"
    lock = json.loads((project / ".dvc/tmp/rwlock").read_text())
    holders = {info["pid"] for infos in lock["read"].values() for info in infos}
    holders |= {info["pid"] for info in lock["write"].values()}
    assert proc.pid in holders, lock

    rerun = run(["dvc", "repro"], project)
    last = ckpt.relative_to(project)
    resumed = rf"softmoe train: resuming {re.escape(str(last))} \(step [1-9]\d*\)"
    assert re.search(resumed, output_of(rerun)), output_of(rerun)[-3000:]
    assert file_hashes(project, skip=TIMING) == file_hashes(reference, skip=TIMING)
    assert leftover_temps(project) == []
    assert dvc_up_to_date(project)


@pytest.mark.e2e
def test_train_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(reference, crash_hook,
                                                                               tmp_path):
    """`softmoe train` killed while it writes its second checkpoint, with TMPDIR on another
    filesystem than the run folder when this machine has one (/dev/shm; node-local /tmp and a
    shared results disk on clusters): last.ckpt is never written in place (else the kill leaves
    it empty), stays the complete first checkpoint, and the rerun resumes from it and ends with
    the uninterrupted run's weights and curves, its temporary files gone."""
    tmpdir = tmp_path / "tmp"
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        tmpdir = shm / f"softmoe-test-{uuid.uuid4().hex}"
    tmpdir.mkdir()
    run_dir = tmp_path / "n2-s0"
    cmd = [str(BIN / "softmoe"), "train", "--params", "params.yaml", "--data", "data/mnist5k",
           "--experts", "2", "--seed", "0", "--out", str(run_dir), "--threads", "1"]
    try:
        killed = subprocess.run(cmd, cwd=reference, capture_output=True, text=True, timeout=600,
                                env=dict(env(), TMPDIR=str(tmpdir), PYTHONPATH=str(crash_hook),
                                         CRASH_AT="open:last.ckpt;rename:last.ckpt:2"))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    import torch
    last = run_dir / "checkpoints" / "last.ckpt"
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < step < 20                         # the first epoch's checkpoint; max_steps is 20
    assert [p.name for p in last.parent.iterdir() if TEMP.fullmatch(p.name)]   # the second one's

    rerun = subprocess.run(cmd, cwd=reference, capture_output=True, text=True, timeout=600, env=env())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"softmoe train: resuming {last} (step {step})" in rerun.stderr
    done = reference / "results/train/mnist5k/n2-s0"
    for name in ("model.safetensors", "curves.csv"):
        assert (run_dir / name).read_bytes() == (done / name).read_bytes(), name
    assert [p.name for p in run_dir.rglob("*") if TEMP.fullmatch(p.name)] == []


# ---- evaluation ------------------------------------------------------------------------------
@pytest.mark.e2e
def test_snakemake_killed_during_evaluate_reruns_it(reference, tmp_path):
    """kill -9 of Snakemake and its jobs while `softmoe evaluate` runs (the study done up to the
    evaluations): the job's output is marked incomplete; `snakemake --unlock` and a rerun run that
    evaluation again and finish the study."""
    project = copy_study(reference, tmp_path / "study")
    # The evaluations and all that follows them removed, as in a first run. (Not `--forcerun
    # evaluate`: Snakemake does not remake a missing intermediate file whose consumers are up to
    # date, so after a kill its plain rerun would rightly do nothing.)
    for rel in ("results/eval", "results/tables/mnist5k/selection.csv", "metrics", "reports"):
        shutil.rmtree(project / rel) if (project / rel).is_dir() else (project / rel).unlink()
    proc = start([str(BIN / "snakemake"), "--cores", "2"], project, tmp_path / "killed.log")
    cmd = kill_while_running(proc, "evaluate", after_s=1)
    out = cmd[cmd.index("--out") + 1]
    assert not (project / out).exists()          # Snakemake removes a job's outputs before it runs
    assert list((project / ".snakemake/incomplete").iterdir())

    snakemake(project, "--unlock")
    rerun = output_of(snakemake(project))
    assert re.search(rf"softmoe evaluate .*--out {re.escape(out)} ", rerun), rerun[-3000:]
    assert_finished_like(project, reference)


@pytest.mark.e2e
def test_dvc_repro_killed_during_evaluate_reruns_it(reference, tmp_path):
    """The same with `dvc repro` (one evaluation stage forced): a plain `dvc repro` runs the stage
    again and everything ends up to date, equal to the uninterrupted study."""
    project = copy_study(reference, tmp_path / "study", uncommitted=("results/eval/mnist5k/n2-s0.csv",))
    proc = start([str(BIN / "dvc"), "repro", "--force", "--single-item", "evaluate@2-0"], project,
                 tmp_path / "killed.log")
    kill_while_running(proc, "evaluate", after_s=1)
    assert not (project / "results/eval/mnist5k/n2-s0.csv").exists()   # DVC removed it first

    rerun = output_of(run(["dvc", "repro"], project))
    assert "Running stage 'evaluate@2-0'" in rerun, rerun[-3000:]
    assert_finished_like(project, reference)
    assert dvc_up_to_date(project)


# ---- report ----------------------------------------------------------------------------------
# `softmoe report` writes report.html, then report.md. Neither is ever opened for writing under
# its final name (the open: points would kill the run there and the premise checks would fail).
IN_PLACE = "open:report.html;open:report.md"


@pytest.mark.e2e
@pytest.mark.parametrize("engine", ["snakemake", "dvc"])
def test_killed_between_the_two_report_files_reruns_the_report(reference, crash_hook, tmp_path, engine):
    """kill -9 of the whole run when report.html is in place and report.md is complete under its
    temporary name only: the rerun (after `snakemake --unlock`) writes the report again, completely,
    and removes the killed job's temporary file."""
    project = copy_study(reference, tmp_path / "study",
                         uncommitted=("reports/report.html", "reports/report.md") if engine == "dvc" else ())
    cmd = ([str(BIN / "snakemake"), "--cores", "2", "--forcerun", "report"] if engine == "snakemake"
           else [str(BIN / "dvc"), "repro", "--force", "--single-item", "report"])
    proc = start_with_crash(cmd, project, tmp_path / "killed.log", crash_hook,
                            f"{IN_PLACE};rename:report.md")
    assert proc.wait(timeout=600) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert (project / "reports/report.html").read_text().rstrip().endswith("</html>")
    assert not (project / "reports/report.md").exists()
    temps = leftover_temps(project)
    assert len(temps) == 1 and temps[0].startswith("reports/.report.md."), temps

    if engine == "snakemake":
        snakemake(project, "--unlock")
        rerun = output_of(snakemake(project))
        assert "softmoe report " in rerun, rerun[-3000:]
    else:
        rerun = output_of(run(["dvc", "repro"], project))
        assert "Running stage 'report'" in rerun, rerun[-3000:]
        assert dvc_up_to_date(project)
    assert_finished_like(project, reference)


@pytest.mark.e2e
def test_snakemake_killed_after_the_last_report_file_still_reruns_the_report(reference, crash_hook,
                                                                            tmp_path):
    """kill -9 right after report.md is renamed into place, before the job exits: both outputs
    exist and are complete, but the job never finished, so Snakemake (rerun-incomplete in the
    profile) runs it again instead of taking it as done."""
    project = copy_study(reference, tmp_path / "study")
    proc = start_with_crash([str(BIN / "snakemake"), "--cores", "2", "--forcerun", "report"], project,
                            tmp_path / "killed.log", crash_hook, f"{IN_PLACE};renamed:report.md")
    assert proc.wait(timeout=600) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    killed_md = project / "reports/report.md"
    assert_report_complete(project, reference)           # both files whole, yet the job was killed
    mtime = killed_md.stat().st_mtime_ns

    snakemake(project, "--unlock")
    rerun = output_of(snakemake(project))
    # a plain run: only the incomplete marker (rerun-incomplete) forces the job
    assert "softmoe report " in rerun and "Reason: Forced execution" in rerun, rerun[-3000:]
    assert killed_md.stat().st_mtime_ns != mtime
    assert_finished_like(project, reference)
