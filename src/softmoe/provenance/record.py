"""Where a run came from: the machine, git state, package versions, file hashes computed from the
files as they are now, Snakemake's per-job wall times, and how the run was started.

The workflow exports SOFTMOE_RUN_COMMAND and SOFTMOE_RUN_START when it starts (Snakefile); a
step run by hand or by DVC says so instead."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import pandas as pd

from softmoe.base import atomic
from softmoe.base.errors import UserError

PACKAGES = ["torch", "torchvision", "timm", "lightning", "dvclive", "dvc", "snakemake", "pandas",
            "numpy", "seaborn", "matplotlib", "safetensors", "mlxtend", "jinja2", "softmoe-repro"]
RUN_COMMAND, RUN_START = "SOFTMOE_RUN_COMMAND", "SOFTMOE_RUN_START"


# ---- the machine --------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The machine this process runs on (CPU model, cores, OS, Python); no GPU query."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cores_available": cores,
            "os": platform.platform(), "python": platform.python_version()}


def versions() -> pd.DataFrame:
    rows = []
    for name in PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        rows.append({"package": name, "version": version})
    return pd.DataFrame(rows)


# ---- git ----------------------------------------------------------------------------------------
def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: Path) -> dict:
    """commit, dirty (bool or None), modified tracked paths (dvc.lock included), untracked count,
    root; tolerant of a folder that is not a git repository."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None:
        return {"commit": "not a git repository (or git missing)", "dirty": None, "modified": [],
                "untracked": 0, "root": str(root)}
    commit = _git(root, "rev-parse", "HEAD")
    status = (_git(root, "status", "--porcelain", "--untracked-files=normal") or "").splitlines()
    modified = [line[3:] for line in status if not line.startswith("??")]
    return {"commit": commit.strip() if commit else "no commit yet", "dirty": bool(status),
            "modified": modified, "untracked": sum(line.startswith("??") for line in status),
            "root": top.strip(), "remote": (_git(root, "remote", "get-url", "origin") or "").strip()}


def git_show(root: Path, relpath: str) -> str | None:
    """A file's text as committed at git HEAD (path from the repository root; None when absent)."""
    return _git(root, "show", f"HEAD:{relpath}")


def committed_json(root: Path, relpath: str) -> dict | None:
    """A JSON file as committed at git HEAD (None when absent or not JSON)."""
    text = git_show(root, relpath)
    if not text:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


# ---- files --------------------------------------------------------------------------------------
def md5(path: Path) -> str:
    """The md5 of a file's bytes, as DVC computes it for a file output."""
    return atomic.digest(path, "md5")


def file_hashes(paths) -> pd.DataFrame:
    """path, bytes, md5 (as DVC computes it) and sha256 (as the RO-Crate lists it, softmoe.provenance.crate)
    of every file under the given files and folders (sorted; temp files of interrupted atomic
    writes skipped), computed now; a path that does not exist is listed as missing."""
    files = set()
    for p in map(Path, paths):
        if p.is_dir():
            files |= {f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")}
        elif p.is_file():
            files.add(p)
    rows = [{"path": f.as_posix(), "bytes": f.stat().st_size, "md5": md5(f), "sha256": atomic.digest(f)}
            for f in sorted(files)]
    rows += [{"path": Path(p).as_posix(), "bytes": None, "md5": "missing", "sha256": "missing"}
             for p in paths if not Path(p).exists()]
    return pd.DataFrame(rows, columns=["path", "bytes", "md5", "sha256"])


# ---- the run ------------------------------------------------------------------------------------
def wall_times(benchmarks_dir: Path) -> pd.DataFrame:
    """One row per Snakemake benchmark file: rule, job, seconds, max_rss (MB)."""
    rows = []
    for file in sorted(Path(benchmarks_dir).rglob("*.tsv")):
        try:
            frame = pd.read_csv(file, sep="\t", na_values=["NA", "-"])
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
            raise UserError(f"{file}: not a Snakemake benchmark file ({err})") from None
        if "s" not in frame.columns or frame.empty:
            raise UserError(f"{file}: Snakemake benchmark file without column 's' or rows")
        rel = file.relative_to(benchmarks_dir)
        rss = pd.to_numeric(frame.get("max_rss", pd.Series(dtype=float)), errors="coerce")
        rows.append({"rule": rel.parts[0] if len(rel.parts) > 1 else rel.stem,
                     "job": str(rel.with_suffix("")), "s": float(pd.to_numeric(frame["s"], errors="coerce").mean()),
                     "max_rss_mb": float(rss.max()) if rss.notna().any() else float("nan")})
    return pd.DataFrame(rows, columns=["rule", "job", "s", "max_rss_mb"])


def run_info(params_path: Path) -> dict:
    """How this run was started and when: the workflow's command and start time when Snakemake
    exported them, else this process's own command line; the time now is the report's."""
    now = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
    command = os.environ.get(RUN_COMMAND)
    start = os.environ.get(RUN_START)
    if command is None:
        command = "dvc repro (stage report)" if os.environ.get("DVC_ROOT") else "softmoe report (by hand)"
    return {"command": command, "start": start or "not recorded (not started by Snakemake)",
            "end": now, "params": str(params_path)}


def reproduce_line(git: dict, params_path: Path) -> str:
    """One command that reruns this study from a fresh clone at this commit."""
    where = git.get("remote") or "<this repository>"
    in_git = "dirty" not in git or git["dirty"] is not None      # git_state: dirty None outside git
    commit = git["commit"][:12] if in_git else "<the commit of these files>"
    config = "" if Path(params_path).name == "params.yaml" else f" --configfile {params_path}"
    return (f"git clone {where} softmoe && cd softmoe && git checkout {commit} && "
            f"python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
            f"snakemake --cores all{config}")
