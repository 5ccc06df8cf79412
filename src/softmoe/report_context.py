"""What every section of the report reads (Context: the study's typed params, tables, claims,
folders, md5 of files) and the traceability block under each figure and table: the table files it was drawn
from (md5), the steps and the code that made it."""
from __future__ import annotations

from pathlib import Path

from softmoe import claims, figures, provenance, stages, tables
from softmoe.params import Study
from softmoe.render import Block

# table -> the step whose per-run files it collects (then `softmoe tabulate`)
TABLE_ORIGIN = {"selection": "evaluate", "training": "train", "curves": "train", "synthetic_loss": "synthetic",
                "synthetic_proof": "proof", "latency": "latency", "calibration": "calibrate"}
FIGURE_TABLES = {"fig1_selection_vs_fraction": ["selection"], "fig2_selection_vs_n": ["selection"],
                 "fig3_synthetic_loss": ["synthetic_loss"], "fig3_proof_check": ["synthetic_proof"],
                 "fig4_oracle": ["selection"], "fig5_latency": ["latency"],
                 "fig6_training_curves": ["curves"], "fig6_all_experts_vs_n": ["training"]}


class Context:
    """What every section reads: the study (the report describes its whole setting), tables,
    claims, folders, and the md5 of files."""

    def __init__(self, study: Study, params_path: Path, tables_dir: Path, figures_dir: Path, claims_json: Path):
        self.study, self.params_path = study, Path(params_path)
        self.tables_dir, self.figures_dir = Path(tables_dir), Path(figures_dir)
        self.frames = {name: tables.read(tables_dir, name) for name in tables.SCHEMAS}
        self.claims_path = Path(claims_json)
        self.claims = claims.read_claims(claims_json)
        self.hardware = tables.read_hardware(tables_dir)
        self._md5: dict[str, str] = {}

    def md5(self, path: Path) -> str:
        key = str(path)
        if key not in self._md5:
            self._md5[key] = provenance.md5(path) if Path(path).is_file() else "missing"
        return self._md5[key]


# ---- traceability ------------------------------------------------------------------------------
def _made_by(step: str) -> str:
    return f"softmoe {step} (Snakemake rule / DVC stage {step})"


def trace(ctx: Context, table_names: list[str], extra_steps: tuple[str, ...] = (), files=()) -> Block:
    """Where a figure or table came from: its table files (md5), the steps and their code."""
    items, steps = [], []
    for name in table_names:
        path = tables.path(ctx.tables_dir, name)
        items.append(("table", f"{path} (md5 {ctx.md5(path)[:10]})", path))
        origin = TABLE_ORIGIN.get(name)
        steps += [origin, "tabulate"] if origin else []
    steps += list(extra_steps)
    steps = list(dict.fromkeys(s for s in steps if s))
    items.append(("made by", " → ".join(_made_by(s) for s in steps), None))
    code = sorted({c for s in steps for c in stages.code(s)})
    items.append(("code", ", ".join(Path(c).name for c in code), None))
    items += [(label, str(path), path) for label, path in files]
    return Block("trace", items=items)


def figure(ctx: Context, stem: str) -> list[Block]:
    title, caption = figures.FIGURES[stem]
    svg = ctx.figures_dir / f"{stem}.svg"
    return [Block("figure", text=stem, caption=f"{title}. {caption}"),
            trace(ctx, FIGURE_TABLES[stem], ("figures",), [("SVG", svg)])]

