"""Code deps derived from imports (softmoe.deps): the analysis itself on a small package, dvc.yaml
against the real package (and against a copy with one import added), and the import-direction rules."""
from __future__ import annotations

import ast
import shutil
import textwrap
from pathlib import Path

import pytest

from softmoe import deps, stages
from softmoe.errors import UserError

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
        assert step in ("report", "crate") or "src/softmoe/stages.py" not in files, step


def test_package_data_files_are_found_in_the_modules_that_load_them():
    assert "src/softmoe/params.schema.yaml" in stages.code("tabulate")  # params.py: SCHEMA_PATH
    assert "src/softmoe/templates/report.html.j2" in stages.code("report")  # report.py: get_template
    assert "src/softmoe/templates/report.html.j2" not in stages.code("figures")


def test_the_model_side_does_not_depend_on_the_report_side():
    """A change to the report, figures or paper numbers must not rerun data, training or evaluation.
    (summarize reads its tables through the experiments' declarations, like the report side.)"""
    report_side = {f"src/softmoe/{name}.py" for name in (
        "report", "report_context", "report_experiments", "report_audit", "render",
        "claims", "discrepancies", "figures", "paper")} | {"src/softmoe/templates/report.html.j2"}
    for step in ("prepare", "train", "synthetic", "proof", "evaluate", "calibrate", "latency"):
        assert not report_side & set(stages.code(step)), step


def test_package_init_runs_no_code():
    """Every import of softmoe runs __init__.py, which is not a dep unless a name is taken from it:
    it may hold only a docstring and constant assignments."""
    tree = ast.parse((deps.PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        assert isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Constant), \
            ast.unparse(node)


def test_dvc_yaml_lists_exactly_the_derived_code_deps():
    assert stages.check_dvc(DVC_YAML) == []
    assert stages.main(["--check", str(DVC_YAML)]) == 0


def test_an_added_import_fails_the_check_for_its_stages(tmp_path):
    """Copy src/softmoe, make evaluate.py import a module it did not reach: the check names the
    missing dep for the evaluate stage (Snakemake follows on its own: its rules call stages.code)."""
    root = tmp_path / "softmoe"
    shutil.copytree(deps.PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    assert "src/softmoe/paper.py" not in deps.step_deps("evaluate", root)
    path = root / "evaluate.py"
    path.write_text(path.read_text().replace("from softmoe import ", "from softmoe import paper, ", 1))
    assert "src/softmoe/paper.py" in deps.step_deps("evaluate", root)
    problems = stages.check_dvc(DVC_YAML, root)
    assert f"{DVC_YAML}: stage evaluate (softmoe evaluate) imports src/softmoe/paper.py: " \
           "add `- src/softmoe/paper.py` to its deps" in problems
    assert not [p for p in problems if "stage report " in p]  # report reached paper.py already


def test_write_puts_the_derived_deps_into_dvc_yaml_and_keeps_the_rest(tmp_path):
    stale = tmp_path / "dvc.yaml"
    stale.write_text(DVC_YAML.read_text())
    stages.write_dvc(stale)  # the real file, brought up to date with the working tree
    fresh = stale.read_text()
    assert stages.check_dvc(stale) == []
    strip = [line for line in DVC_YAML.read_text().splitlines() if not line.lstrip().startswith("- src/")]
    assert [line for line in fresh.splitlines() if not line.lstrip().startswith("- src/")] == strip
    stale.write_text(fresh.replace("      - src/softmoe/evaluate.py\n", "", 1).replace(
        "      - src/softmoe/figures.py\n", "      - src/softmoe/figures.py\n      - src/softmoe/bench.py\n", 1))
    problems = stages.check_dvc(stale)
    assert any("imports src/softmoe/evaluate.py: add `- src/softmoe/evaluate.py`" in p for p in problems)
    assert any("does not use src/softmoe/bench.py: remove it" in p for p in problems)
    assert stages.main(["--check", str(stale)]) == 1
    stages.write_dvc(stale)
    assert stale.read_text() == fresh


def test_write_refuses_a_stage_without_deps(tmp_path):
    bare = tmp_path / "dvc.yaml"
    bare.write_text("stages:\n  fig:\n    cmd: softmoe figures --tables t --out f\n    outs:\n      - f\n")
    with pytest.raises(UserError, match="stage\\(s\\) fig have no `deps:` list"):
        stages.write_dvc(bare)


def _rules():
    rules = [f"FORBIDDEN[{m}]" for m in deps.FORBIDDEN] + [f"ALLOWED[{m}]" for m in deps.ALLOWED]
    return [pytest.param(rule, id=rule, marks=[pytest.mark.xfail(reason=KNOWN[rule], strict=True)] if rule in KNOWN else [])
            for rule in rules]


@pytest.mark.parametrize("rule", _rules())
def test_imports_run_one_way(rule):
    """CLI -> steps -> tables/claims -> math: each ALLOWED / FORBIDDEN rule of deps.py holds."""
    broken = [chain for r, chain in deps.violations() if r == rule]
    assert not broken, broken


def test_no_import_cycle(toy):
    assert stages.cycles() == []
    (toy / "fit.py").write_text("from softmoe import store\n")      # fit -> store -> fit
    (toy / "store.py").write_text("from softmoe import fit\n")
    assert ["fit", "store"] in stages.cycles(toy)


def test_rules_name_existing_modules():
    names = set(deps.modules())
    named = {m for m in deps.ALLOWED} | {m for m in deps.FORBIDDEN if m != "*"}
    named |= set().union(*deps.ALLOWED.values(), *deps.FORBIDDEN.values())
    assert named <= names, named - names


def test_rules_catch_a_forbidden_edge(toy):
    (toy / "layer.py").write_text("from softmoe import fit\n")
    assert ("ALLOWED[layer]", "layer -> fit") in deps.violations(toy)
    (toy / "store.py").write_text("import softmoe.cli\n")
    assert ("FORBIDDEN[*]", "fit -> store -> cli") in deps.violations(toy)
