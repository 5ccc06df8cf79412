"""What every section of the report reads (Context: the study's typed params, tables, claims,
folders, md5 of files) and the traceability block under each figure and table: the table files it was drawn
from (md5) and the steps that made it (their code: the provenance section)."""
from __future__ import annotations

from pathlib import Path

from softmoe import experiments
from softmoe.audit import claims
from softmoe.provenance import record
from softmoe.workflow import tables
from softmoe.study.params import Study
from softmoe.report.render import Block, Section


class Context:
    """What every section reads: the study (the report describes its whole setting), tables,
    claims, folders, and the md5 of files."""

    def __init__(self, study: Study, params_path: Path, tables_dir: Path, figures_dir: Path, claims_json: Path):
        self.study, self.params_path = study, Path(params_path)
        self.tables_dir, self.figures_dir = Path(tables_dir), Path(figures_dir)
        self.frames = tables.read_all(tables_dir)
        self.claims_path = Path(claims_json)
        self.claims = claims.read_claims(claims_json)
        self.hardware = tables.read_hardware(tables_dir)
        self.shown: set[str] = set()         # figure stems a section has shown
        self._md5: dict[str, str] = {}

    def md5(self, path: Path) -> str:
        key = str(path)
        if key not in self._md5:
            self._md5[key] = record.md5(path) if Path(path).is_file() else "missing"
        return self._md5[key]


# ---- traceability ------------------------------------------------------------------------------
def _made_by(step: str) -> str:
    return f"softmoe {step} (Snakemake rule / DVC stage {step})"


def trace(ctx: Context, table_names: list[str], extra_steps: tuple[str, ...] = (), files=()) -> Block:
    """Where a figure or table came from: its table files (md5) and the steps that made them (the
    code of each step is listed once, in the provenance section)."""
    items, steps = [], []
    for name in table_names:
        path = tables.path(ctx.tables_dir, name)
        items.append(("table", f"{path} (md5 {ctx.md5(path)[:10]})", path))
        spec = experiments.table(name)
        steps += [spec.step, "tabulate"] if spec.source else [spec.step]
    steps += list(extra_steps)
    steps = list(dict.fromkeys(s for s in steps if s))
    items.append(("made by", " → ".join(_made_by(s) for s in steps), None))
    items += [(label, str(path), path) for label, path in files]
    return Block("trace", items=items)


def figure(ctx: Context, stem: str) -> list[Block]:
    spec = experiments.figures()[stem]
    ctx.shown.add(stem)
    svg = ctx.figures_dir / f"{stem}.svg"
    return [Block("figure", text=stem, caption=f"{spec.title}. {spec.caption}"),
            trace(ctx, list(spec.tables), ("figures",), [("SVG", svg)])]


def unshown_sections(ctx: Context) -> list[Section]:
    """A section for every experiment with figures that no section of the report has shown (a
    new experiment before it gets a section of its own): its title and figures."""
    out = []
    for unit in experiments.all_experiments():
        stems = [f.stem for f in unit.figures if f.stem not in ctx.shown]
        if stems:
            out.append(Section(f"{unit.title} ({unit.key}; paper: {unit.paper})",
                               [block for stem in stems for block in figure(ctx, stem)]))
    return out
