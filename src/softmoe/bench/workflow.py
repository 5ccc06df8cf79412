"""What `softmoe bench` reads and times of the workflow: the study's own Snakemake benchmark
files (wall seconds per rule, item 3) and the overhead of a no-op Snakemake run and `dvc status`
(item 4)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from softmoe.base.errors import UserError


# ---- 3. the study's own benchmark files ------------------------------------------------------
def study_benchmarks(root: Path) -> dict:
    """Sum of Snakemake's benchmark `s` (wall seconds) per rule, rule = first folder under root."""
    files = sorted(root.rglob("*.tsv")) if root.is_dir() else []
    rules: dict[str, dict] = {}
    for path in files:
        rel = path.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else path.stem
        entry = rules.setdefault(rule, {"rule": rule, "jobs": 0, "seconds": 0.0})
        entry["jobs"] += 1
        entry["seconds"] += _benchmark_seconds(path)
    return {"root": str(root), "found": bool(files), "rules": sorted(rules.values(), key=lambda r: r["rule"]),
            "total_s": sum(r["seconds"] for r in rules.values())}


def _benchmark_seconds(path: Path) -> float:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    header = lines[0].split("\t") if lines else []
    if "s" not in header or len(lines) < 2:
        raise UserError(f"{path}: not a Snakemake benchmark file (a header with column 's' and at "
                        "least one row); delete it and rerun its rule")
    col = header.index("s")
    try:
        return sum(float(line.split("\t")[col]) for line in lines[1:])
    except (ValueError, IndexError) as err:
        raise UserError(f"{path}: unreadable benchmark row ({err}); delete it and rerun its rule") from err


# ---- 4. workflow overhead ---------------------------------------------------------------------
def _tool(name: str) -> str | None:
    """A path as given, else the tool beside this Python (the venv), else on PATH."""
    if os.sep in name:
        return name if Path(name).exists() else None
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def timed_command(label: str, argv: list[str], cwd: Path, timeout_s: float = 300.0) -> dict:
    """Wall time of one command; failures are recorded (error string), never raised."""
    row = {"command": label, "argv": argv}
    exe = _tool(argv[0])
    if exe is None:
        return {**row, "ok": False, "error": f"{argv[0]}: not found"}
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        done = subprocess.run([exe, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {**row, "ok": False, "seconds": time.perf_counter() - start, "error": str(err)}
    output = (done.stdout + done.stderr).strip()
    row.update(seconds=time.perf_counter() - start, returncode=done.returncode, ok=done.returncode == 0,
               output_tail=output[-400:])
    if done.returncode:
        row["error"] = output[-400:] or f"exit status {done.returncode}"
    return row


def workflow_overhead(root: Path) -> list[dict]:
    """Dry run, then a real no-op `snakemake --cores all` only if nothing is to be done, and `dvc status`."""
    dry = timed_command("snakemake --cores all -n", ["snakemake", "--cores", "all", "-n"], root)
    rows = [dry]
    if dry["ok"] and "Nothing to be done" in dry["output_tail"]:
        rows.append(timed_command("snakemake --cores all", ["snakemake", "--cores", "all"], root))
    else:
        rows.append({"command": "snakemake --cores all", "ok": False,
                     "error": "not run: the dry run did not report 'Nothing to be done' (study not "
                              "finished, or bench itself runs inside the workflow)"})
    rows.append(timed_command("dvc status", ["dvc", "status"], root))
    return rows
