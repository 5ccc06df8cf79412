"""The results tables: writing and reading them checked against their schema (declared by their
experiment, softmoe.experiments), and `concat` (the `tabulate` step), which builds
results/tables/<dataset>/<table>.csv from the per-run files of the current grid
(docs/architecture.md, "File formats"). Compute steps write their per-run files themselves;
`tabulate` checks them against the schema."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from softmoe import experiments
from softmoe.base import atomic
from softmoe.base.errors import UserError
from softmoe.experiments.unit import Schema


METHODS = {"all", "alg1", "random", "oracle"}


def schema(name: str) -> Schema:
    """The schema of a table, as its experiment declares it (softmoe.experiments)."""
    return experiments.table(name).schema


def names() -> list[str]:
    """Every table of the study."""
    return list(experiments.tables())


def read_all(tables_dir: Path) -> dict[str, pd.DataFrame | None]:
    """Every table of the study (None for an optional table that is absent), checked."""
    return {name: read(tables_dir, name) for name in names()}


def columns(name: str) -> list[str]:
    return list(schema(name).columns)


def path(tables_dir: Path, name: str) -> Path:
    return Path(tables_dir) / f"{name}.csv"


def write(out: Path, frame: pd.DataFrame, name: str) -> None:
    """Write a table (or one run's rows of it) with exactly its schema's columns, atomically."""
    missing = [c for c in schema(name).columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} rows lack column(s) {missing}")
    atomic.write_csv(out, frame[columns(name)])


def read(tables_dir: Path, name: str) -> pd.DataFrame | None:
    """One table, checked against its schema; None if an optional table is absent."""
    file = path(tables_dir, name)
    if not file.is_file():
        if experiments.table(name).required:
            raise UserError(f"{file}: required table not found; run `softmoe tabulate` first")
        return None
    try:
        frame = pd.read_csv(file)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserError(f"{file}: not a readable CSV table ({err}); rerun the step that writes it") from None
    check(file, name, frame)
    if experiments.table(name).required and frame.empty:
        raise UserError(f"{file}: the table has no rows; rerun `softmoe tabulate`")
    return frame


def check(file: Path, name: str, frame: pd.DataFrame) -> None:
    """Columns present, numeric columns numeric, required cells filled; converts in place."""
    spec = schema(name)
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise UserError(f"{file}: missing column(s) {', '.join(missing)}; expected {', '.join(spec.columns)}")
    for col in spec.numeric:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            raise UserError(f"{file}: column '{col}' must be numeric; row {int(bad.idxmax()) + 2} "
                            f"holds {frame[col][bad].iloc[0]!r}")
        frame[col] = values
    for col in spec.required:
        if frame[col].isna().any():
            raise UserError(f"{file}: column '{col}' is empty in row {int(frame[col].isna().idxmax()) + 2}")
    if "method" in spec.columns:
        _check_methods(file, frame)


def _check_methods(file: Path, frame: pd.DataFrame) -> None:
    unknown = sorted(set(frame["method"]) - METHODS)
    if unknown:
        raise UserError(f"{file}: column 'method' holds {unknown}; allowed: {sorted(METHODS)}")
    truth = {True: True, False: False, "True": True, "False": False, "true": True, "false": False,
             1: True, 0: False}
    renorm = frame["renormalize"].map(lambda v: truth.get(v))
    if renorm.isna().any():
        raise UserError(f"{file}: column 'renormalize' must be True or False")
    frame["renormalize"] = renorm.astype(bool)


def read_json(file: Path, fix: str) -> dict | None:
    """A JSON object file (hardware.json, claims.json, ...) or None when absent."""
    file = Path(file)
    if not file.is_file():
        return None
    try:
        obj = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{file}: not valid JSON ({err}); {fix}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{file}: expected a JSON object; {fix}")
    return obj


def read_hardware(tables_dir: Path) -> dict | None:
    """hardware.json (written by the latency step) or None."""
    return read_json(Path(tables_dir) / "hardware.json", "rerun `softmoe latency`")


# ---- the tabulate step ------------------------------------------------------------------------
def read_rows(file: Path) -> pd.DataFrame:
    """A per-run CSV file as is, or a JSON object (flat metrics) as one row."""
    if not file.is_file():
        raise UserError(f"{file}: input file not found; run the step that makes it first")
    if file.suffix == ".json":
        obj = json.loads(file.read_text())
        return pd.DataFrame([{k: v for k, v in obj.items() if not isinstance(v, (dict, list))}])
    return pd.read_csv(file)


def concat(study, table: str, out: Path) -> None:
    """Write results/tables/<dataset>/<table>.csv from the per-run files of the study's current
    grid (its experiment's Table.inputs), with the run's keys (n, seed, tokens, ...) added as
    columns where the file lacks them; checked against the table's schema."""
    inputs = experiments.table(table).inputs(study)
    frames = []
    for file, keys in inputs:
        frame = read_rows(file)
        for key, value in keys.items():
            if key not in frame.columns:
                frame.insert(0, key, value)
        check(file, table, frame)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns(table))
    write(out, frame, table)
