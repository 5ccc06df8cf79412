"""The README's two commands: `make study` / `make test` and their set-up, scripts/setup-venv.sh.

Each test copies the Makefile and the script into a folder with a stub pyproject.toml and runs
them from a shell environment with no venv activated. pip is replaced by a recorder through the
script's SOFTMOE_PIP (documented in its header), so the decisions are checked without installing
anything: a fresh folder gets a real .venv (with pip, ~5 s) and one install; an unchanged
pyproject.toml none; a changed one, or one whose install failed, another.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SH = shutil.which("sh")
PYTHON311 = sys.executable if sys.version_info[:2] == (3, 11) else shutil.which("python3.11")
RECORDER = """#!/bin/sh
# Stands in for pip: records its arguments and the folder it ran in, exits with $RECORD_EXIT.
printf '%s | %s\\n' "$*" "$(pwd)" >> "$RECORD"
exit "${RECORD_EXIT:-0}"
"""

pytestmark = pytest.mark.skipif(PYTHON311 is None, reason="needs a Python 3.11 to create .venv with")


def _project(tmp_path: Path, name: str = "project") -> Path:
    project = tmp_path / name
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup-venv.sh", project / "scripts")
    shutil.copy(ROOT / "Makefile", project)
    (project / "pyproject.toml").write_text('[project]\nname = "stub"\nversion = "0.1.0"\n')
    recorder = tmp_path / "pip-recorder"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    return project


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A fresh shell's environment: no venv on PATH, pip replaced by the recorder."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS")}
    return {**env, "PATH": path, "SOFTMOE_PYTHON": PYTHON311, "RECORD": str(tmp_path / "pip.log"),
            "SOFTMOE_PIP": str(tmp_path / "pip-recorder"), **extra}


def _setup(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    # From another folder: the script finds the project from its own path, as `make -C` would.
    return subprocess.run([SH, str(project / "scripts" / "setup-venv.sh")], cwd=project.parent,
                          env=env, capture_output=True, text=True, timeout=120)


def _installs(tmp_path: Path) -> list[str]:
    log = tmp_path / "pip.log"
    return log.read_text().splitlines() if log.exists() else []


def _stamp(project: Path) -> str | None:
    stamp = project / ".venv" / ".installed-pyproject"
    return stamp.read_text().strip() if stamp.exists() else None


def _sha(project: Path) -> str:
    return hashlib.sha256((project / "pyproject.toml").read_bytes()).hexdigest()


def test_fresh_folder_gets_a_venv_and_installs_only_when_pyproject_changes(tmp_path):
    project = _project(tmp_path)
    env = _env(tmp_path)

    done = _setup(project, env)                                        # a fresh clone
    assert done.returncode == 0, done.stderr
    venv_python = project / ".venv" / "bin" / "python"
    version = subprocess.run([venv_python, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == "(3, 11)"
    assert (project / ".venv" / "bin" / "pip").exists()                 # a real venv, pip included
    assert _installs(tmp_path) == [f"install -e .[test] | {project}"]
    assert _stamp(project) == _sha(project)

    done = _setup(project, env)                                        # unchanged: nothing to do
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert len(_installs(tmp_path)) == 1

    with (project / "pyproject.toml").open("a") as f:                  # a new pin: install again
        f.write('dependencies = ["numpy==2.4.6"]\n')
    done = _setup(project, env)
    assert done.returncode == 0, done.stderr
    assert len(_installs(tmp_path)) == 2 and _stamp(project) == _sha(project)

    with (project / "pyproject.toml").open("a") as f:                  # pip fails: say why, retry next time
        f.write("# another change\n")
    failed = _setup(project, _env(tmp_path, RECORD_EXIT="1"))
    assert failed.returncode != 0
    assert "network" in failed.stderr and "rerun the same make command" in failed.stderr
    assert _stamp(project) is None
    done = _setup(project, env)
    assert done.returncode == 0, done.stderr
    assert len(_installs(tmp_path)) == 4 and _stamp(project) == _sha(project)

    copy = tmp_path / "copy"                                           # a venv copied from elsewhere
    shutil.copytree(project, copy, symlinks=True)
    moved = _setup(copy, env)
    assert moved.returncode != 0
    assert "moved or copied" in moved.stderr and "rm -rf .venv" in moved.stderr
    assert len(_installs(tmp_path)) == 4


def _bare_venv(project: Path) -> Path:
    subprocess.run([PYTHON311, "-m", "venv", "--without-pip", str(project / ".venv")], check=True)
    return project / ".venv" / "bin" / "python"


@pytest.mark.parametrize("damage", ["interpreter gone", "interpreter fails"])
def test_broken_venv_says_how_to_fix_it(tmp_path, damage):
    project = _project(tmp_path)
    python = _bare_venv(project)
    python.unlink()
    if damage == "interpreter gone":        # e.g. the Python it was made from was uninstalled
        python.symlink_to(tmp_path / "no-such-python3.11")
    else:
        python.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 1\n")
        python.chmod(0o755)
    done = _setup(project, _env(tmp_path))
    assert done.returncode != 0
    assert ".venv is broken" in done.stderr and "rm -rf .venv" in done.stderr
    assert _installs(tmp_path) == []


def test_no_python_311_names_what_to_install(tmp_path):
    project = _project(tmp_path)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name in ("python3.11", "python3"):                              # none of them is a working 3.11
        (fake_bin / name).write_text("#!/bin/sh\nexit 1\n")
        (fake_bin / name).chmod(0o755)
    env = _env(tmp_path, PATH=f"{fake_bin}{os.pathsep}/usr/bin{os.pathsep}/bin")
    del env["SOFTMOE_PYTHON"]
    done = _setup(project, env)
    assert done.returncode != 0
    assert "no Python 3.11 found" in done.stderr and "apt install python3.11" in done.stderr
    assert "SOFTMOE_PYTHON=" in done.stderr
    assert not (project / ".venv").exists()

    named = _setup(project, _env(tmp_path, SOFTMOE_PYTHON=str(tmp_path / "missing-python")))
    assert named.returncode != 0 and "is not a working Python 3.11" in named.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_sets_up_then_runs_from_the_venv_with_args(tmp_path):
    project = _project(tmp_path)
    _bare_venv(project)
    for tool in ("snakemake", "pytest"):    # stand-ins that show how make called them
        script = project / ".venv" / "bin" / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $* | PATH=$PATH"\n')
        script.chmod(0o755)
    env = _env(tmp_path)
    venv_bin = f"{project}/.venv/bin"

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-s", *args], cwd=project, env=env, capture_output=True,
                              text=True, timeout=120)

    study = make("study", "ARGS=--configfile config/mnist.yaml")
    assert study.returncode == 0, study.stderr
    assert f"snakemake --cores all --configfile config/mnist.yaml | PATH={venv_bin}:" in study.stdout
    assert len(_installs(tmp_path)) == 1                               # set-up ran first

    test = make("test", "ARGS=tests/test_stats.py -x")
    assert test.returncode == 0, test.stderr
    assert f"pytest tests/test_stats.py -x | PATH={venv_bin}:" in test.stdout
    assert len(_installs(tmp_path)) == 1                               # and installed only once

    (project / ".venv" / "bin" / "python").unlink()                   # a failed set-up stops make
    broken = make("test")
    assert broken.returncode != 0 and "pytest" not in broken.stdout
    assert ".venv is broken" in broken.stderr
