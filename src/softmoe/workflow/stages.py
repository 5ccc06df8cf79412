"""What each step depends on besides its input files: params keys and source files.

Snakemake rules put these into `params:` (a change reruns the rule) and `input:`; dvc.yaml lists
the same keys under `params:` and the same files under `deps:`. The params keys are listed here;
the source files are derived from the imports of the step's code (softmoe.provenance.deps), never listed.
dvc.yaml's per-table lists are derived from the experiments' tables (softmoe.experiments).
tests/test_workflow.py checks that the two engines agree with this module; tests/test_deps.py
that dvc.yaml lists exactly the derived files and tables: `python -m softmoe.workflow.stages --check
dvc.yaml` compares, `--write dvc.yaml` rewrites those lines, `--graph` prints the import graph."""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import yaml

from softmoe import experiments
from softmoe.base import atomic
from softmoe.provenance import deps
from softmoe.base.errors import UserError

# step -> params keys it reads, with {dataset} filled from params.yaml
STEPS = {
    "prepare": ["datasets.{dataset}"],
    "train": ["model", "train"],
    "synthetic": ["synthetic.batch_size", "synthetic.steps", "synthetic.lr"],   # the seed: in the path
    "proof": ["synthetic.proof_scales"],
    "evaluate": ["evaluate"],
    "calibrate": ["model", "train", "evaluate", "calibration.epochs"],
    "hypothesis": ["model", "train", "evaluate", "hypotheses"],
    "hypotheses": ["hypotheses"],
    "tabulate": [],
    "summarize": [],
    "latency": ["latency"],
    "claims": [],
    "figures": [],
    "report": ["report"],
    "crate": [],
}


def param_keys(step: str, params: dict) -> list[str]:
    """The dotted params keys a step reads, {dataset} filled in. params here is the raw mapping
    (Snakemake's config, dvc.yaml's keys), not softmoe.study.params.Study: these name the file's keys."""
    return [k.format(dataset=params["dataset"]) for k in STEPS[step]]


def code(step: str) -> list[str]:
    """The source files `softmoe <step>` runs (src/softmoe/..., sorted), from its imports."""
    return deps.step_deps(step)


def param_values(step: str, params: dict) -> str:
    """The values of a step's params keys, as one stable string (Snakemake's rerun trigger)."""
    values = {}
    for key in param_keys(step, params):
        node = params
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return json.dumps(values, sort_keys=True)


def tabulated() -> list[str]:
    """The tables `softmoe tabulate` builds (declared by softmoe.experiments)."""
    return experiments.tabulated()


def tables() -> list[str]:
    """Every table of the study, tabulated or written whole by its step."""
    return list(experiments.tables())


def table_files(study, table: str) -> list[str]:
    """The per-run files one table of a study is made of (Snakemake's inputs of `tabulate`)."""
    return [str(path) for path, _ in experiments.table(table).inputs(study)]


def cycles(root=deps.PACKAGE) -> list[list[str]]:
    """The import cycles of the package: every group of two or more modules that reach each
    other through imports (softmoe.provenance.deps), each sorted; tests/test_deps.py keeps it empty."""
    reach = {m: deps.closure({m}, root) for m in deps.modules(root)}
    groups = {frozenset(o for o in reach[m] if m in reach[o]) for m in reach}
    return sorted(sorted(g) for g in groups if len(g) > 1)


# ---- dvc.yaml ------------------------------------------------------------------------------------
def _dvc_steps(dvc_yaml: Path) -> dict[str, tuple[str, set[str] | None]]:
    """dvc.yaml stage -> (the softmoe step its cmd runs, the src/ files its deps list; None: no deps)."""
    out = {}
    for stage, spec in yaml.safe_load(Path(dvc_yaml).read_text())["stages"].items():
        body = spec.get("do", spec)
        words = body["cmd"].split()
        if words[0] == "softmoe":
            listed = body.get("deps")
            out[stage] = (words[1], None if listed is None else
                          {d for d in listed if isinstance(d, str) and d.startswith("src/")})
    return out


# dvc.yaml's per-table lists, derived from the experiments' tables (softmoe.experiments): the
# tabulate stage's `foreach` (table: the folder of its per-run files) and the table deps of the
# stages that read every table.
READS_ALL_TABLES = ("claims", "figures", "report")
TABLE_DEP = "results/tables/${dataset}/%s.csv"


def _tabulated_folders() -> dict[str, str]:
    return {name: experiments.table(name).folder for name in experiments.tabulated()}


def _table_deps() -> list[str]:
    return [TABLE_DEP % name for name in experiments.tables()]


def _is_table_dep(line: str) -> bool:
    dep = line.strip()[2:].split("#")[0].strip()
    return dep.startswith(TABLE_DEP.split("%s")[0]) and dep.endswith(".csv") and "/discrepancies.csv" not in dep


def table_problems(dvc_yaml: Path) -> list[str]:
    """One line per per-table list of dvc.yaml that differs from the experiments' tables."""
    stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
    problems = []
    folders = stages.get("tabulate", {}).get("foreach")
    if folders != _tabulated_folders():
        problems.append(f"{dvc_yaml}: stage tabulate's foreach is {folders}, the experiments declare "
                        f"{_tabulated_folders()}: run `python -m softmoe.workflow.stages --write {dvc_yaml}`")
    for stage in READS_ALL_TABLES:
        listed = {d for d in stages.get(stage, {}).get("deps", []) if isinstance(d, str) and _is_table_dep(f"- {d}")}
        if listed != set(_table_deps()):
            problems.append(f"{dvc_yaml}: stage {stage} lists tables {sorted(listed)}, the experiments declare "
                            f"{sorted(_table_deps())}: run `python -m softmoe.workflow.stages --write {dvc_yaml}`")
    return problems


def check_dvc(dvc_yaml: Path, root: Path = deps.PACKAGE) -> list[str]:
    """One line per src/ dep that a dvc.yaml stage lacks or lists in excess of its step's derived
    deps, and per per-table list that differs from the experiments' tables."""
    problems = table_problems(dvc_yaml) if root == deps.PACKAGE else []
    for stage, (step, listed) in _dvc_steps(dvc_yaml).items():
        derived, listed = set(deps.step_deps(step, root)), listed or set()
        problems += [f"{dvc_yaml}: stage {stage} (softmoe {step}) imports {dep}: add `- {dep}` to its deps"
                     for dep in sorted(derived - listed)]
        problems += [f"{dvc_yaml}: stage {stage} (softmoe {step}) does not use {dep}: remove it from its deps"
                     for dep in sorted(listed - derived)]
    return problems


def write_dvc(dvc_yaml: Path, root: Path = deps.PACKAGE) -> None:
    """Rewrite, in place, the src/ lines of every softmoe stage's `deps:` list with the derived
    ones (after its other deps), the tabulate stage's `foreach` and the table deps of the stages
    that read every table; every other line of the file stays as it is."""
    steps = _dvc_steps(dvc_yaml)
    bare = [stage for stage, (_, listed) in steps.items() if listed is None]
    if bare:
        raise UserError(f"{dvc_yaml}: stage(s) {', '.join(bare)} have no `deps:` list; add one, then rerun")
    lines, out, stage, i = Path(dvc_yaml).read_text().splitlines(keepends=True), [], None, 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage = line.strip()[:-1]  # a stage name (dvc.yaml indents stages by two spaces)
        if stage == "tabulate" and line.strip().startswith("foreach:") and root == deps.PACKAGE:
            indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
            while i < len(lines) and lines[i].startswith(indent) and not lines[i].strip().startswith("do:"):
                i += 1
            out += [f"{indent}{name}: {folder}\n" for name, folder in _tabulated_folders().items()]
        if stage in steps and line.strip() == "deps:":
            indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
            tables_at = None
            while i < len(lines) and lines[i].startswith(indent + "- "):
                if stage in READS_ALL_TABLES and _is_table_dep(lines[i]) and root == deps.PACKAGE:
                    tables_at = len(out) if tables_at is None else tables_at
                elif not lines[i].startswith(indent + "- src/"):
                    out.append(lines[i])
                i += 1
            if tables_at is not None:
                out[tables_at:tables_at] = [f"{indent}- {dep}\n" for dep in _table_deps()]
            out += [f"{indent}- {dep}\n" for dep in deps.step_deps(steps[stage][0], root)]
    atomic.write_text(dvc_yaml, "".join(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m softmoe.workflow.stages", description=__doc__.splitlines()[0])
    ap.add_argument("--check", metavar="DVC_YAML", help="compare a dvc.yaml's src deps with the derived ones")
    ap.add_argument("--write", metavar="DVC_YAML", help="rewrite a dvc.yaml's src deps with the derived ones")
    ap.add_argument("--graph", action="store_true", help="print the import graph and rule violations")
    ap.add_argument("step", nargs="*", help="steps whose code deps to print (default: every cmd_<step>)")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except UserError as err:
        print(f"python -m softmoe.workflow.stages: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.check:
        problems = check_dvc(Path(args.check))
        print("\n".join(problems) or f"{args.check}: every stage lists exactly its code deps")
        return 1 if problems else 0
    if args.write:
        write_dvc(Path(args.write))
        return 0
    if args.graph:
        print(deps.graph(), end="")
        broken = deps.violations()
        print("\nrule violations:\n" + ("\n".join(f"{rule}: {chain}" for rule, chain in broken) or "none"))
        return 0
    tree = deps._tree(deps.module_file("cli"))
    steps = args.step or [n.name[4:] for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("cmd_")]
    for step in steps:
        print(f"{step}: {' '.join(deps.step_deps(step))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
