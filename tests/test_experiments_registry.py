"""An experiment is one module (docs/architecture.md, "Adding an experiment"): a toy experiment
added to a copy of the package reaches the tables (tabulate, schema checks), the figures, the
report and dvc.yaml's derived lists, with no other file edited; and the registry's
declarations are complete and consistent."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from softmoe import experiments
from softmoe.provenance import deps
from softmoe.workflow import stages, tables

ROOT = Path(__file__).resolve().parents[1]

TOY = '''
"""A toy experiment: one value per run of the grid."""
from softmoe.experiments import plots
from softmoe.study import layout
from softmoe.experiments.unit import Experiment, Figure, Table, schema

TOY = schema("dataset n seed value", "n seed value", "dataset n seed value")


def _draw(evidence):
    toy = evidence.frames["toy"]
    if toy is None or toy.empty:
        return "toy.csv missing"
    fig, (ax,) = plots.panels(1)
    ax.plot(toy["n"], toy["value"], marker="o")
    return fig


EXPERIMENT = Experiment(
    key="toy", title="A toy experiment", paper="none",
    tables=(Table("toy", TOY, step="evaluate", source="results/toy/{dataset}/n{n}-s{seed}.json",
                  runs=layout.runs),),
    figures=(Figure("toy_values", "Toy values", "The toy value of every run.", ("toy",), _draw),),
)
'''

SCRIPT = '''
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from softmoe import experiments
from softmoe.report import build, figures
from softmoe.workflow import tables
from softmoe.study.params import Study
from test_figures import sample_params
from test_report import _bench_dir, _claims, _hashed, _params_file, write_sample_tables

root = Path.cwd()
params = sample_params()
study = Study.of(params)
assert "toy" in experiments.tabulated(), experiments.tabulated()
for run in experiments.table("toy").inputs(study):
    path, keys = run
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({{"value": keys["n"] * 0.5}}))
folder = write_sample_tables(root / "results" / "tables" / "mnist5k")
tables.concat(study, "toy", folder / "toy.csv")
figs = root / "reports" / "figures"
figures.make_figures(study, folder, figs)
claims_json = _claims(params, folder, root)
html, md = root / "reports" / "report.html", root / "reports" / "report.md"
build.build_report(study, _params_file(root, params), folder, figs, claims_json, _bench_dir(root),
                    _hashed(root), html, md)
print("toy ok")
'''


def test_a_toy_experiment_module_reaches_tables_figures_report_and_dvc_yaml(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(deps.PACKAGE, src / "softmoe", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "softmoe" / "experiments" / "toy.py").write_text(TOY)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(src), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(ROOT / "tests"))], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "toy ok" in done.stdout, done.stderr[-3000:]
    toy = (work / "results" / "tables" / "mnist5k" / "toy.csv").read_text().splitlines()
    assert toy[0] == "dataset,n,seed,value" and len(toy) == 1 + 6          # the sample grid: 6 runs
    assert (work / "reports" / "figures" / "toy_values.png").stat().st_size > 1000
    md = (work / "reports" / "report.md").read_text()
    assert "## A toy experiment (toy; paper: none)" in md and "toy_values.png" in md
    # dvc.yaml's per-table lists follow: the check names the missing table, --write adds it
    dvc = tmp_path / "dvc.yaml"
    dvc.write_text((ROOT / "dvc.yaml").read_text())
    check = textwrap.dedent(f"""
        from pathlib import Path
        from softmoe.workflow import stages
        problems = stages.table_problems(Path({str(dvc)!r}))
        assert any("toy" in p for p in problems), problems
        stages.write_dvc(Path({str(dvc)!r}))
        assert stages.table_problems(Path({str(dvc)!r})) == [], "write did not add the table"
        print("dvc ok")""")
    done = subprocess.run([sys.executable, "-c", check], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "dvc ok" in done.stdout, done.stderr[-3000:]
    assert "toy: results/toy" in dvc.read_text()


def test_every_declaration_is_consistent():
    """Unique table and figure names; figures read declared tables; tabulated tables name the
    folder of their per-run files; every table's step is a CLI step."""
    units = experiments.all_experiments()
    names = [t.name for u in units for t in u.tables]
    stems = [f.stem for u in units for f in u.figures]
    assert len(names) == len(set(names)) and len(stems) == len(set(stems))
    steps = set(stages.STEPS)
    for unit in units:
        for table in unit.tables:
            spec = tables.schema(table.name)
            assert set(spec.numeric) <= set(spec.columns) and set(spec.required) <= set(spec.columns), table.name
            assert table.step in steps, (table.name, table.step)
            if table.source is not None:
                assert table.folder and "{" not in table.folder and table.source.startswith(table.folder + "/")
        for fig in unit.figures:
            assert set(fig.tables) <= set(names), fig.stem
            assert fig.title and fig.caption and callable(fig.draw)
