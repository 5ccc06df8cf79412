"""Concatenate the per-run outputs (CSV tables, JSON metrics) of the current grid into one tidy CSV."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from softmoe import atomic, layout
from softmoe.errors import UserError


def read_rows(path: Path) -> pd.DataFrame:
    """A CSV file as is, or a JSON object (flat metrics) as one row."""
    if not path.is_file():
        raise UserError(f"{path}: input file not found; run the step that makes it first")
    if path.suffix == ".json":
        obj = json.loads(path.read_text())
        return pd.DataFrame([{k: v for k, v in obj.items() if not isinstance(v, (dict, list))}])
    return pd.read_csv(path)


def concat(params: dict, table: str, out: Path) -> None:
    """Write results/tables/<dataset>/<table>.csv from the per-run files of the current grid only."""
    frames = []
    for path, keys in layout.table_inputs(params, table):
        frame = read_rows(path)
        for key, value in keys.items():
            if key not in frame.columns:
                frame.insert(0, key, value)
        frames.append(frame)
    atomic.write_csv(out, pd.concat(frames, ignore_index=True))
