"""What an experiment declares (docs/architecture.md, "Adding an experiment"): the tables its step
writes (schema and per-run files), the figures drawn from them (drawer and caption) and the
claims judged on them. Everything else -- the table list of `tabulate`, dvc.yaml's per-table
lists, the report's figures and traceability -- is derived from these declarations by the
registry, softmoe.experiments."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from softmoe.base.errors import UserError


@dataclass(frozen=True)
class Schema:
    columns: tuple[str, ...]      # in file order
    numeric: tuple[str, ...]      # parsed as numbers (empty cells allowed unless in `required`)
    required: tuple[str, ...]     # never empty


def schema(columns: str, numeric: str, required: str) -> Schema:
    """A Schema from three space-separated column lists."""
    return Schema(tuple(columns.split()), tuple(numeric.split()), tuple(required.split()))


@dataclass(frozen=True)
class Table:
    """One tidy table of results/tables/<dataset>/.

    `step` is the softmoe step that makes its rows. With a `source` (a softmoe.study.layout template of
    one run's file) and `runs` (the wildcards of every run of a study), `softmoe tabulate`
    concatenates the per-run files; without, the step writes the table itself."""
    name: str
    schema: Schema
    step: str
    source: str | None = None
    runs: Callable[[Any], list[dict]] | None = None
    required: bool = False        # the report cannot be written without it

    def inputs(self, study) -> list[tuple[Path, dict]]:
        """The per-run files of this table for a study, with the wildcards each one filled in."""
        if self.source is None or self.runs is None:
            raise UserError(f"table {self.name} is written whole by `softmoe {self.step}`; "
                            "`softmoe tabulate` builds only the tables made of per-run files")
        return [(Path(self.source.format(**keys)), keys) for keys in self.runs(study)]

    @property
    def folder(self) -> str | None:
        """The folder its per-run files live under (dvc.yaml's tabulate dependency)."""
        if self.source is None:
            return None
        parts = self.source.split("/")
        return "/".join(parts[:next(i for i, p in enumerate(parts) if "{" in p)])


@dataclass
class Evidence:
    """What figures and claims read: the study's typed params (softmoe.study.params.Study), its tables
    (name -> DataFrame or None when absent), the GPU benchmark file when there is one and, for the
    claims, what a claim on the image grid was judged on (`scope`) and this run's scale next to the
    paper's (`scale`; both softmoe.experiments.training's)."""
    study: Any
    frames: dict
    gpu: dict | None = None
    scope: dict | None = None
    scale: dict | None = None


@dataclass(frozen=True)
class Figure:
    """One figure: `draw(evidence)` returns a matplotlib Figure, or a string saying why it could
    not be drawn (the figures step then draws a "not run" panel with it)."""
    stem: str
    title: str
    caption: str
    tables: tuple[str, ...]
    draw: Callable[[Evidence], Any]


@dataclass(frozen=True)
class Experiment:
    """One experiment of the study: its tables, figures and claims (each claim a function of the
    Evidence that returns a softmoe.audit.claims.Claim)."""
    key: str
    title: str
    paper: str                    # the paper's items it reproduces
    tables: tuple[Table, ...] = ()
    figures: tuple[Figure, ...] = ()
    claims: tuple[Callable[[Evidence], Any], ...] = field(default=())


# ---- claims -----------------------------------------------------------------------------------
SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = "SUPPORTED", "CONTRADICTED", "INCONCLUSIVE", "NOT RUN"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN)
ALPHA = 0.05      # family-wise over one claim's tests (softmoe.statistics.inference.ALPHA)


@dataclass
class Claim:
    """One claim judged on a run by interval tests (softmoe.statistics.inference, softmoe.statistics.verdicts): what it
    says, which of the paper's claims it tests (docs/study.md §1: "a", "b", "c"; None for our own
    checks), what it was judged on and at what scale next to the paper's, its tests with their
    margins and why those margins, the verdict and, for NOT RUN, why; for INCONCLUSIVE, the
    smallest effect beyond the margin this run could have detected."""
    key: str
    statement: str
    scope: dict
    paper_claim: str | None
    tolerance: str                # the tests in words: which effect, which side of which margin
    margin_reason: str            # why these margins
    verdict: str = NOT_RUN
    why: str = ""                 # NOT RUN: why
    detectable: str = ""          # INCONCLUSIVE: the smallest detectable effect beyond the margin
    tests: list = field(default_factory=list)     # {what, effect, lo, hi, margin, direction, outcome, mde}
    alpha: float = ALPHA
    correction: str = ""
    scale: dict = field(default_factory=dict)
    ours: str = "–"
    paper: str = "–"
    evidence: str = ""
    numbers: dict = field(default_factory=dict)   # numeric values for `dvc metrics diff`


@dataclass
class Observation:
    """A measurement reported next to the claims but not judged (no verdict), with the reason."""
    key: str
    statement: str
    scope: dict
    ours: str = "–"
    note: str = ""
    numbers: dict = field(default_factory=dict)
