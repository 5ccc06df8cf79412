"""The results tables: the one definition of each table's columns and types, its writer and its
reader, and `concat` (the `tabulate` step), which builds results/tables/<dataset>/<table>.csv
from the per-run files of the current grid. Every step that writes or reads a table imports it
from here (docs/architecture.md, "File formats")."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from softmoe import atomic
from softmoe.errors import UserError


@dataclass(frozen=True)
class Schema:
    columns: tuple[str, ...]      # in file order
    numeric: tuple[str, ...]      # parsed as numbers (empty cells allowed unless in `required`)
    required: tuple[str, ...]     # never empty


def _schema(columns: str, numeric: str, required: str) -> Schema:
    return Schema(tuple(columns.split()), tuple(numeric.split()), tuple(required.split()))


SCHEMAS = {
    # one row per (dataset, n, seed, k, method, renormalize): softmoe evaluate
    "selection": _schema("dataset n seed k k_frac method renormalize accuracy std z count images",
                         "n seed k k_frac accuracy std z count images",
                         "dataset n seed k method renormalize accuracy"),
    # one row per trained model: softmoe train's metrics.json
    "training": _schema("dataset n seed test_accuracy test_loss train_loss params_total params_experts "
                        "expert_hidden epochs steps wall_time_s device threads",
                        "n seed test_accuracy test_loss train_loss params_total params_experts "
                        "expert_hidden epochs steps wall_time_s threads",
                        "dataset n seed test_accuracy"),
    # one row per epoch of a trained model: softmoe train's curves.csv (+ n, seed)
    "curves": _schema("epoch step train_loss train_accuracy test_loss test_accuracy n seed",
                      "epoch step train_loss train_accuracy test_loss test_accuracy n seed",
                      "step n seed"),
    # one row per step of a synthetic run: softmoe synthetic's loss.csv (+ variance, tokens, n)
    "synthetic_loss": _schema("step loss variance tokens n", "step loss variance n", "step loss variance tokens n"),
    # one row per (case, scale a) of the proof check: softmoe proof
    "synthetic_proof": _schema("case a slot_gap norm_gap abs_error_A abs_error_B variance tokens",
                               "a slot_gap norm_gap abs_error_A abs_error_B variance",
                               "case a slot_gap norm_gap variance tokens"),
    # one row per (config, n, k, batch): softmoe latency
    "latency": _schema("config n k k_frac batch device median_ms q25_ms q75_ms repeats ratio ideal flops "
                       "flop_ratio", "n k k_frac batch median_ms q25_ms q75_ms repeats ratio ideal flops "
                       "flop_ratio", "config n k batch median_ms"),
    # the selection rows of the models trained for the paper's epochs: softmoe calibrate
    "calibration": _schema("dataset n seed k k_frac method renormalize accuracy std z count images "
                           "epochs steps", "n seed k k_frac accuracy std z count images epochs steps",
                           "dataset n seed k method renormalize accuracy"),
}
REQUIRED = ("selection", "training")      # the report cannot be written without these
METHODS = {"all", "alg1", "random", "oracle"}
CURVE_COLUMNS = list(SCHEMAS["curves"].columns[:6])   # curves.csv of one run, before n and seed


def columns(name: str) -> list[str]:
    return list(SCHEMAS[name].columns)


def path(tables_dir: Path, name: str) -> Path:
    return Path(tables_dir) / f"{name}.csv"


def write(out: Path, frame: pd.DataFrame, name: str) -> None:
    """Write a table (or one run's rows of it) with exactly its schema's columns, atomically."""
    missing = [c for c in SCHEMAS[name].columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} rows lack column(s) {missing}")
    atomic.write_csv(out, frame[columns(name)])


def read(tables_dir: Path, name: str) -> pd.DataFrame | None:
    """One table, checked against its schema; None if an optional table is absent."""
    file = path(tables_dir, name)
    if not file.is_file():
        if name in REQUIRED:
            raise UserError(f"{file}: required table not found; run `softmoe tabulate` first")
        return None
    try:
        frame = pd.read_csv(file)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserError(f"{file}: not a readable CSV table ({err}); rerun the step that writes it") from None
    check(file, name, frame)
    if name in REQUIRED and frame.empty:
        raise UserError(f"{file}: the table has no rows; rerun `softmoe tabulate`")
    return frame


def check(file: Path, name: str, frame: pd.DataFrame) -> None:
    """Columns present, numeric columns numeric, required cells filled; converts in place."""
    schema = SCHEMAS[name]
    missing = [c for c in schema.columns if c not in frame.columns]
    if missing:
        raise UserError(f"{file}: missing column(s) {', '.join(missing)}; expected {', '.join(schema.columns)}")
    for col in schema.numeric:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            raise UserError(f"{file}: column '{col}' must be numeric; row {int(bad.idxmax()) + 2} "
                            f"holds {frame[col][bad].iloc[0]!r}")
        frame[col] = values
    for col in schema.required:
        if frame[col].isna().any():
            raise UserError(f"{file}: column '{col}' is empty in row {int(frame[col].isna().idxmax()) + 2}")
    if "method" in schema.columns:
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


def concat(inputs: list[tuple[Path, dict]], table: str, out: Path) -> None:
    """Write results/tables/<dataset>/<table>.csv from per-run files (layout.table_inputs: the
    current grid only), with the run's keys (n, seed, tokens, ...) added as columns where the
    file lacks them."""
    frames = []
    for file, keys in inputs:
        frame = read_rows(file)
        for key, value in keys.items():
            if key not in frame.columns:
                frame.insert(0, key, value)
        frames.append(frame)
    columns_ = columns(table)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns_)
    write(out, frame, table)
