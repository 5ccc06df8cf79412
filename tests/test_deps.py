"""Code deps derived from imports (softmoe.provenance.deps): the analysis itself on a small package, dvc.yaml
against the real package (and against a copy with one import added), and the import-direction rules."""
from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from softmoe.provenance import deps
from softmoe.workflow import stages
from softmoe.base.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = ROOT / "dvc.yaml"
# Rules of deps.ALLOWED / FORBIDDEN that current code breaks -> why (strict: a fix must drop the entry).
KNOWN: dict[str, str] = {}   # rule -> why it is still broken (none now)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "softmoe"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def toy(tmp_path):
    """A package with every import form the analysis follows, and some it must not."""
    return _package(tmp_path, {
        "__init__.py": "VERSION = '1'\n",
        "cli.py": """
            from softmoe.errors import UserError
            from softmoe import layout

            def _params(args):
                from softmoe import params
                return params.load(args)

            def cmd_fit(args):
                import softmoe.fit as f
                f.run(_params(args))

            def cmd_draw(args):
                from softmoe.draw import draw
                draw(layout.PATHS)

            def main(argv):
                raise UserError(argv)
            """,
        "errors.py": "class UserError(Exception):\n    pass\n",
        "layout.py": "PATHS = 1\n",
        "params.py": "SCHEMA = 'params.schema.yaml'\ndef load(x):\n    return x\n",
        "params.schema.yaml": "{}\n",
        "unused.yaml": "{}\n",
        "fit.py": """
            from . import math

            def run(p):
                from softmoe.store import save  # only inside a function
                save(math.f(p))
            """,
        "math.py": "from softmoe import VERSION\ndef f(p):\n    return p\n",
        "store.py": "def save(x):\n    return 'templates/page.j2'\n",
        "templates/page.j2": "{{ x }}\n",
        "draw.py": "import json\ndef draw(x):\n    return json.dumps(x)\n",
        "other.py": "from softmoe import fit\n",
    })


def test_a_step_reaches_function_level_relative_and_package_imports_and_data_files(toy):
    assert deps.step_deps("fit", toy) == [deps.PREFIX + f for f in [
        "__init__.py", "fit.py", "math.py", "params.py", "params.schema.yaml", "store.py", "templates/page.j2"]]


def test_draw_uses_no_params_helper(toy):
    """cmd_draw neither calls _params nor uses UserError: only its own imports and `layout`."""
    assert deps.step_deps("draw", toy) == [deps.PREFIX + "draw.py", deps.PREFIX + "layout.py"]


def test_an_unknown_step_names_the_fix(toy):
    with pytest.raises(UserError, match=r"cli.py has no cmd_nope; define it there \(steps: draw, fit\)"):
        deps.step_deps("nope", toy)


def test_graph_marks_lazy_imports(toy):
    graph = deps.graph(toy)
    assert "fit -> math (lazy store)\n" in graph
    assert "cli -> errors, layout (lazy draw, fit, params)\n" in graph


def test_every_step_of_the_package_has_existing_deps_and_stages_serves_them():
    for step in stages.STEPS:
        files = stages.code(step)
        assert files == deps.step_deps(step) and files == sorted(files)
        assert all((ROOT / f).is_file() for f in files), step
        assert "src/softmoe/cli.py" not in files
        # Only the report and the crate read the stage table (to say which step and code made each
        # table, and which code files the run used); no step that computes results may depend on it.
        assert step in ("report", "crate") or "src/softmoe/workflow/stages.py" not in files, step


def test_package_data_files_are_found_in_the_modules_that_load_them():
    assert "src/softmoe/study/params.schema.yaml" in stages.code("tabulate")  # params.py: SCHEMA_PATH
    assert "src/softmoe/report/templates/report.html.j2" in stages.code("report")  # report.py: get_template
    assert "src/softmoe/report/templates/report.html.j2" not in stages.code("figures")


def test_the_model_side_does_not_depend_on_the_report_side():
    """A change to the report, figures or paper numbers must not rerun data, training or evaluation.
    (summarize reads its tables through the experiments' declarations, like the report side.)"""
    report_side = {f"src/softmoe/{name}.py" for name in (
        "audit/claims", "statistics/discrepancies", "study/paper")}
    report_side |= {f"src/softmoe/report/{p.relative_to(deps.PACKAGE / 'report').as_posix()}"
                    for p in (deps.PACKAGE / "report").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    for step in ("prepare", "train", "synthetic", "proof", "evaluate", "calibrate", "latency"):
        assert not report_side & set(stages.code(step)), step


def test_package_init_runs_no_code():
    """Every import of softmoe runs __init__.py, which is not a dep unless a name is taken from it:
    it holds only its docstring, constants and the lazy `__getattr__` of the public names."""
    tree = ast.parse((deps.PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            assert node.name == "__getattr__"
            continue
        assert isinstance(node, (ast.Expr, ast.Assign)), ast.unparse(node)
        assert isinstance(node.value, (ast.Constant, ast.Dict, ast.Call)), ast.unparse(node)


def test_the_public_names_come_from_their_rooms_without_loading_torch():
    import softmoe
    assert set(softmoe.__all__) == set(softmoe.PUBLIC)
    probe = "import softmoe, sys; assert 'torch' not in sys.modules; print(softmoe.SoftMoE.__module__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "softmoe.model.layer"
    for name, room in softmoe.PUBLIC.items():
        assert getattr(softmoe, name) is getattr(importlib.import_module(f"softmoe.{room}"), name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        softmoe.nope  # noqa: B018


def test_package_code_imports_from_the_rooms():
    """Inside src/softmoe nothing takes a public name from the package itself: deps would see
    __init__.py, not the room the name lives in."""
    for mod in deps.modules():
        tree = ast.parse(deps.module_file(mod).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "softmoe" and not node.level:
                assert all(deps.module_file(a.name) for a in node.names), (mod, ast.unparse(node))


def test_dvc_yaml_lists_exactly_the_derived_code_deps():
    assert stages.check_dvc(DVC_YAML) == []
    assert stages.main(["--check", str(DVC_YAML)]) == 0


def test_an_added_import_fails_the_check_for_its_stages(tmp_path):
    """Copy src/softmoe, make evaluate.py import a module it did not reach: the check names the
    missing dep for the evaluate stage (Snakemake follows on its own: its rules call stages.code)."""
    root = tmp_path / "softmoe"
    shutil.copytree(deps.PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    assert "src/softmoe/study/paper.py" not in deps.step_deps("evaluate", root)
    path = root / "steps" / "evaluate.py"
    path.write_text(path.read_text().replace("from softmoe.base import atomic\n",
                                         "from softmoe.base import atomic\nfrom softmoe.study import paper\n", 1))
    assert "src/softmoe/study/paper.py" in deps.step_deps("evaluate", root)
    problems = stages.check_dvc(DVC_YAML, root)
    assert f"{DVC_YAML}: stage evaluate (softmoe evaluate) imports src/softmoe/study/paper.py: " \
           "add `- src/softmoe/study/paper.py` to its deps" in problems
    assert not [p for p in problems if "stage report " in p]  # report reached paper.py already


def test_write_puts_the_derived_deps_into_dvc_yaml_and_keeps_the_rest(tmp_path):
    stale = tmp_path / "dvc.yaml"
    stale.write_text(DVC_YAML.read_text())
    stages.write_dvc(stale)  # the real file, brought up to date with the working tree
    fresh = stale.read_text()
    assert stages.check_dvc(stale) == []
    strip = [line for line in DVC_YAML.read_text().splitlines() if not line.lstrip().startswith("- src/")]
    assert [line for line in fresh.splitlines() if not line.lstrip().startswith("- src/")] == strip
    stale.write_text(fresh.replace("      - src/softmoe/steps/evaluate.py\n", "", 1).replace(
        "      - src/softmoe/report/figures.py\n", "      - src/softmoe/report/figures.py\n      - src/softmoe/bench/suite.py\n", 1))
    problems = stages.check_dvc(stale)
    assert any("imports src/softmoe/steps/evaluate.py: add `- src/softmoe/steps/evaluate.py`" in p for p in problems)
    assert any("does not use src/softmoe/bench/suite.py: remove it" in p for p in problems)
    assert stages.main(["--check", str(stale)]) == 1
    stages.write_dvc(stale)
    assert stale.read_text() == fresh


def test_write_refuses_a_stage_without_deps(tmp_path):
    bare = tmp_path / "dvc.yaml"
    bare.write_text("stages:\n  fig:\n    cmd: softmoe figures --tables t --out f\n    outs:\n      - f\n")
    with pytest.raises(UserError, match="stage\\(s\\) fig have no `deps:` list"):
        stages.write_dvc(bare)


def _rules():
    rules = [f"ROOMS[{r}]" for r in deps.ROOMS] + [f"ALLOWED[{m}]" for m in deps.ALLOWED]
    return [pytest.param(rule, id=rule, marks=[pytest.mark.xfail(reason=KNOWN[rule], strict=True)] if rule in KNOWN else [])
            for rule in rules]


@pytest.mark.parametrize("rule", _rules())
def test_imports_run_one_way(rule):
    """CLI -> steps -> tables/claims -> math: each ROOMS / ALLOWED rule of deps.py holds."""
    broken = [chain for r, chain in deps.violations() if r == rule]
    assert not broken, broken


def test_the_rooms_are_layers():
    """Every subpackage is a room with stated arrows, and the arrows between rooms form no cycle."""
    rooms = {deps.room(m) for m in deps.modules()}
    assert rooms == set(deps.ROOMS), rooms ^ set(deps.ROOMS)
    assert all(targets <= set(deps.ROOMS) - {"cli"} for targets in deps.ROOMS.values())
    done: set[str] = set()
    while len(done) < len(deps.ROOMS):
        ready = {r for r, targets in deps.ROOMS.items() if r not in done and targets <= done}
        assert ready, f"cycle among the rooms {sorted(set(deps.ROOMS) - done)}"
        done |= ready
    # the rules the issue states in words
    assert deps.ROOMS["model"] <= {"base", "study"}                 # the math knows no data, training or CLI
    assert not deps.ROOMS["report"] & {"model", "data", "steps"}     # the report reads tables, never models


def test_room_subpackages_run_no_code():
    """Importing softmoe.<room>.<module> runs the room's __init__.py, which no dep list names:
    it may hold only its docstring (the experiments registry is a module of its own, followed as one)."""
    for init in deps.PACKAGE.glob("*/__init__.py"):
        if init.parent.name == "experiments":
            continue
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), init


def test_no_import_cycle(toy):
    assert stages.cycles() == []
    (toy / "fit.py").write_text("from softmoe import store\n")      # fit -> store -> fit
    (toy / "store.py").write_text("from softmoe import fit\n")
    assert ["fit", "store"] in stages.cycles(toy)


def test_rules_name_existing_modules():
    names = set(deps.modules())
    named = set(deps.ALLOWED) | set().union(*deps.ALLOWED.values())
    assert named <= names, named - names


def test_rules_catch_a_forbidden_edge(tmp_path, monkeypatch):
    root = _package(tmp_path, {
        "__init__.py": "",
        "cli.py": "from softmoe.steps import fit\n",
        "base/__init__.py": "", "base/errors.py": "",
        "model/__init__.py": "", "model/layer.py": "from softmoe.model import selection\n",
        "model/selection.py": "from softmoe.steps import fit\n",
        "steps/__init__.py": "", "steps/fit.py": "from softmoe.model import layer\nfrom softmoe import cli\n",
    })
    monkeypatch.setattr(deps, "ROOMS", {"__init__": set(), "base": set(), "model": {"base"},
                                        "steps": {"base", "model"}, "cli": {"steps"}})
    monkeypatch.setattr(deps, "ALLOWED", {"model.layer": {"model.selection"}})
    found = deps.violations(root)
    assert ("ROOMS[model]", "model.selection -> steps.fit") in found     # an arrow the rooms do not allow
    assert ("ROOMS[steps]", "steps.fit -> cli") in found                 # nothing imports the CLI
    assert ("ALLOWED[model.layer]", "model.layer -> model.selection -> steps.fit") in found
