"""The code files each `softmoe <step>` depends on, derived from the imports of src/softmoe.

A step's code is found by static analysis (ast), never listed by hand:
- start at `cmd_<step>` in cli.py: the softmoe modules it imports in its body, the module-level
  softmoe imports of cli.py whose names it uses, and the same for the cli.py helpers it calls
  (e.g. `_study` imports params). cli.py itself is not a dep: it parses the arguments of every
  step, so listing it would rerun the whole study for a new option of one step;
- follow every import of a softmoe module, at module level or inside a function
  (`import softmoe.x`, `from softmoe import x`, `from softmoe.x import y`, relative forms);
- add the package data files a reached module names in a string literal (params.schema.yaml,
  report.html.j2): any non-Python file under src/softmoe whose path or name a literal equals.
src/softmoe/__init__.py is a dep only when a name is imported from it; tests/test_deps.py
keeps it free of code so that importing the package runs nothing else.

stages.code() serves these lists to Snakemake; `python -m softmoe.workflow.stages --check dvc.yaml`
compares them with dvc.yaml's `deps:` and prints the lines to add or remove. ROOMS and
ALLOWED are the direction rules of the import graph (`python -m softmoe.workflow.stages --graph`
prints it). This module imports nothing of the package but errors, since the train step
imports it for its code identity."""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

from softmoe.base.errors import UserError

PACKAGE = Path(__file__).resolve().parents[1]
PREFIX = "src/softmoe/"  # how the repository root names the package folder

# room -> the rooms its modules may import. A room is a subpackage of src/softmoe; the top-level
# modules are rooms of their own ("cli", "__init__"). The rooms are layers: the math knows no data,
# training, tables, reports or CLI; steps know no claims or reports; the report reads tables and
# claims, never models or steps; nothing imports the CLI. test_deps checks every import edge.
ROOMS = {
    "__init__": set(),
    "base": set(),
    "study": {"base"},
    "provenance": {"base", "study"},
    "model": {"base", "study"},
    "data": {"base", "study"},
    "statistics": {"base", "study", "provenance"},
    "experiments": {"base", "study", "statistics"},
    "workflow": {"base", "study", "provenance", "experiments"},
    "bench": {"base", "study", "provenance", "model"},
    "steps": {"base", "study", "provenance", "model", "data", "bench"},
    "audit": {"base", "study", "provenance", "data", "statistics", "experiments", "workflow", "steps"},
    "report": {"base", "study", "provenance", "statistics", "experiments", "workflow", "audit"},
}
ROOMS["cli"] = set(ROOMS) - {"cli", "__init__"}
# module -> the only softmoe modules it may reach (directly or through others), inside its room:
# the layer and Algorithm 1 know nothing but each other and the error type.
ALLOWED = {
    "base.errors": set(),
    "base.atomic": set(),
    "study.layout": set(),
    "model.selection": {"base.errors"},
    "model.layer": {"base.errors", "model.selection"},
}


def module_file(name: str, root: Path = PACKAGE) -> Path | None:
    """The file of softmoe module `name` (without the `softmoe.` prefix), if it exists."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _bindings(node: ast.Import | ast.ImportFrom, package: str, root: Path) -> list[tuple[str, str]]:
    """(name bound, softmoe module loaded) for one import statement ("__init__": the package itself)."""
    if isinstance(node, ast.Import):
        return [((a.asname or a.name).split(".")[0], a.name.split(".", 1)[1])
                for a in node.names if a.name.startswith("softmoe.") and module_file(a.name.split(".", 1)[1], root)]
    if node.level:  # relative: resolved against the importing module's package
        parts = package.split(".") if package else []
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join([*parts, *(node.module.split(".") if node.module else [])])
    elif node.module == "softmoe" or (node.module or "").startswith("softmoe."):
        base = node.module.partition(".")[2]
    else:
        return []
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        found.append((alias.asname or alias.name, sub if module_file(sub, root) else base or "__init__"))
    return [(name, mod) for name, mod in found if module_file(mod, root)]  # a missing module fails at import


def _imported(node: ast.Import | ast.ImportFrom, package: str, root: Path) -> set[str]:
    return {mod for _, mod in _bindings(node, package, root)}


def _tree(path: Path) -> ast.Module:
    return _scan(path.read_text(), str(path))[0]


@lru_cache(maxsize=None)
def _scan(text: str, filename: str) -> tuple[ast.Module, list[tuple[ast.Import | ast.ImportFrom, bool]], set[str]]:
    """A module's tree, its import statements (each with: is it at module level?) and its string literals."""
    tree = ast.parse(text, filename=filename)
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, top))
            visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, True)
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return tree, found, literals


def imports(name: str, root: Path = PACKAGE) -> dict[str, bool]:
    """softmoe module -> whether `name` imports it at module level (False: only inside a function).
    A package whose __init__.py sets DISCOVERS_SUBMODULES (a registry that imports its modules by
    name, softmoe.experiments) imports every module of the package, lazily."""
    path = module_file(name, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree, statements, _ = _scan(path.read_text(), str(path))
    found: dict[str, bool] = {}
    for node, top in statements:
        for mod in _imported(node, package, root):
            found[mod] = found.get(mod, False) or top
    if path.name == "__init__.py" and _discovers(tree):
        for sub in sorted(path.parent.glob("*.py")):
            if sub.name != "__init__.py":
                found.setdefault(f"{name}.{sub.stem}", False)
    found.pop(name, None)
    return found


def _discovers(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "DISCOVERS_SUBMODULES"
                                                  for t in n.targets) for n in tree.body)


def _data_files(root: Path) -> dict[str, str]:
    """Non-Python files of the package: path relative to `root` -> file name."""
    return {p.relative_to(root).as_posix(): p.name for p in root.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


def data_files(name: str, root: Path = PACKAGE, files: dict[str, str] | None = None) -> set[str]:
    """Package data files (paths relative to `root`) that module `name` names in a string literal:
    by file name, or by path relative to the package root or to the module's own folder."""
    path = module_file(name, root)
    literals = _scan(path.read_text(), str(path))[2]
    here = path.parent.relative_to(root).as_posix() + "/"
    return {rel for rel, base in (files or _data_files(root)).items()
            if rel in literals or base in literals or rel.removeprefix(here) in literals}


def _cli_entry(step: str, root: Path) -> set[str]:
    """The softmoe modules `cmd_<step>` of cli.py imports, itself or through the cli helpers it calls."""
    tree = _tree(module_file("cli", root))
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    if f"cmd_{step}" not in funcs:
        steps = sorted(f[4:] for f in funcs if f.startswith("cmd_"))
        raise UserError(f"no step {step!r}: cli.py has no cmd_{step}; define it there (steps: {', '.join(steps)})")
    bound: dict[str, set[str]] = {}  # name bound by a module-level softmoe import of cli.py -> modules
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name, mod in _bindings(node, "", root):
                bound.setdefault(name, set()).add(mod)
    found, seen, todo = set(), set(), [f"cmd_{step}"]
    while todo:
        func = todo.pop()
        seen.add(func)
        for node in ast.walk(funcs[func]):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found |= _imported(node, "", root)
            elif isinstance(node, ast.Name):
                if node.id in bound:
                    found |= bound[node.id]
                elif node.id in funcs and node.id not in seen:
                    todo.append(node.id)
    return found


def closure(start: set[str], root: Path = PACKAGE) -> set[str]:
    """`start` and every softmoe module it reaches through imports."""
    reached, todo = set(), list(start)
    while todo:
        mod = todo.pop()
        if mod not in reached:
            reached.add(mod)
            todo.extend(imports(mod, root))
    return reached


def _rel(name: str, root: Path) -> str:
    return module_file(name, root).relative_to(root).as_posix()


def step_deps(step: str, root: Path = PACKAGE) -> list[str]:
    """The code files of `softmoe <step>`, sorted, as the repository names them (src/softmoe/...)."""
    return module_deps(_cli_entry(step, root), root)


def module_deps(start: set[str], root: Path = PACKAGE) -> list[str]:
    """The code files of the softmoe modules `start` and all they import (src/softmoe/..., sorted)."""
    mods = closure(start, root)
    data = _data_files(root)
    files = {_rel(m, root) for m in mods} | {f for m in mods for f in data_files(m, root, data)}
    return sorted(PREFIX + f for f in files)


def code_digests(files: list[str]) -> dict[str, str]:
    """{src/softmoe/<file>: sha256} of code files as module_deps/step_deps name them: the code
    identity of a checkpoint or of a benchmark file."""
    return {path: hashlib.sha256((PACKAGE / path.removeprefix(PREFIX)).read_bytes()).hexdigest() for path in files}


def changed_files(recorded: dict[str, str]) -> list[str]:
    """The files of a recorded {path: sha256 (or a prefix of it)} whose code is not today's
    (missing files included): empty when the code that made a result is the code here."""
    changed = []
    for path, digest in sorted(recorded.items()):
        file = PACKAGE / path.removeprefix(PREFIX)
        if not file.is_file() or not hashlib.sha256(file.read_bytes()).hexdigest().startswith(str(digest)):
            changed.append(path)
    return changed


def modules(root: Path = PACKAGE) -> list[str]:
    return sorted(_module_name(p, root) for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def graph(root: Path = PACKAGE) -> str:
    """The import graph as text: `a -> b, c (lazy d)`; lazy imports are inside functions."""
    lines = []
    for mod in modules(root):
        edges = imports(mod, root)
        eager = sorted(m for m, top in edges.items() if top)
        lazy = sorted(m for m, top in edges.items() if not top)
        lines.append(f"{mod} -> {', '.join(eager) or '-'}" + (f" (lazy {', '.join(lazy)})" if lazy else ""))
    return "\n".join(lines) + "\n"


def _path(start: str, goal: str, root: Path) -> list[str] | None:
    """A shortest import chain from `start` to `goal`, or None."""
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for mod in frontier:
            for dep in sorted(imports(mod, root)):
                if dep not in prev:
                    prev[dep] = mod
                    nxt.append(dep)
        frontier = nxt
    if goal not in prev:
        return None
    chain = [goal]
    while prev[chain[-1]] is not None:
        chain.append(prev[chain[-1]])
    return chain[::-1]


def room(module: str) -> str:
    """The room of a module: its subpackage, or the module itself at the top level."""
    return module.split(".")[0]


def violations(root: Path = PACKAGE) -> list[tuple[str, str]]:
    """(rule, import chain) for every import that breaks a rule: ("ROOMS[model]", "model.models -> data.datasets")."""
    out = []
    for mod in modules(root):
        here = room(mod)
        out += [(f"ROOMS[{here}]", f"{mod} -> {dep}") for dep in sorted(imports(mod, root))
                if room(dep) != here and room(dep) not in ROOMS.get(here, set())]
        if mod in ALLOWED:
            reached = closure({mod}, root) - {mod}
            out += [(f"ALLOWED[{mod}]", " -> ".join(_path(mod, goal, root))) for goal in sorted(reached - ALLOWED[mod])]
    return out
