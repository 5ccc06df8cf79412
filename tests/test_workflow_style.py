"""The workflow as the Snakemake community checks it: snakefmt-formatted, and `snakemake --lint`
finds nothing but the conda/container advice (README: the software is the pip-installed package)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from workflow_helpers import BIN, ROOT, env, make_project

# conda channels cannot be reached from our machines: no rule names a conda env or container.
EXPECTED_LINT = "Specify a conda environment or container for each rule."


def snakemake_files(root: Path) -> list[Path]:
    return [root / "Snakefile", *sorted((root / "workflow" / "rules").glob("*.smk"))]


def test_snakefile_and_rule_files_are_snakefmt_formatted():
    assert (BIN / "snakefmt").is_file(), "snakefmt is missing: pip install -e '.[test]' (pyproject.toml pins it)"
    proc = subprocess.run([str(BIN / "snakefmt"), "--check", "--diff", *map(str, snakemake_files(ROOT))],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"run `snakefmt Snakefile workflow/rules`:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"


@pytest.mark.e2e
def test_lint_finds_nothing_but_the_conda_advice(tmp_path):
    """`snakemake --lint` on a copy with the committed params.yaml (parse only, no job runs)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    project = make_project(tmp_path / "p", params=params, dvc=False)
    proc = subprocess.run(["timeout", "300", str(BIN / "snakemake"), "--lint"], cwd=project, env=env(),
                          capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    findings = re.findall(r"^    \* (.+?):?$", out, flags=re.M)
    assert "Lints for rule" in out, out[-3000:]     # it parsed the workflow and linted its rules
    assert [f for f in findings if f.rstrip(":") != EXPECTED_LINT.rstrip(":")] == [], out[-6000:]
