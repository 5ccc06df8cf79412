"""The study's experiments: every module of this package but the kit (`unit`, `plots`) declares one, as
`EXPERIMENT = softmoe.experiments.unit.Experiment(...)`. The registry finds them (no list to
edit): adding an experiment is its module, its rule file and its params section
(docs/architecture.md, "Adding an experiment"). Modules are imported on first use, in name
order, so importing one experiment does not import the others; softmoe.provenance.deps counts every module
here as a dependency of this registry (DISCOVERS_SUBMODULES)."""
from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from softmoe.base.errors import UserError
from softmoe.experiments.unit import Experiment, Figure, Table

DISCOVERS_SUBMODULES = True
KIT = ("unit", "plots")  # the modules experiments are written with, not experiments


@cache
def all_experiments() -> tuple[Experiment, ...]:
    """Every experiment, in module-name order."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name not in KIT:
            found.append(importlib.import_module(f"{__name__}.{info.name}").EXPERIMENT)
    return tuple(found)


def tables() -> dict[str, Table]:
    """Every table of every experiment, by name."""
    return {t.name: t for e in all_experiments() for t in e.tables}


def tabulated() -> list[str]:
    """The tables `softmoe tabulate` builds from per-run files."""
    return [name for name, t in tables().items() if t.source is not None]


def table(name: str) -> Table:
    found = tables()
    if name not in found:
        raise UserError(f"no table {name!r}; tables: {', '.join(sorted(found))}")
    return found[name]


def figures() -> dict[str, Figure]:
    """Every figure of every experiment, by stem, in experiment order."""
    return {f.stem: f for e in all_experiments() for f in e.figures}


def claims() -> list:
    """Every claim function of every experiment, in experiment order."""
    return [judge for e in all_experiments() for judge in e.claims]
