"""softmoe.workflow.tables: every results table written and read through its one schema; malformed
tables stop with one message naming the file, the column and the fix."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from softmoe.steps import train
from softmoe.workflow import tables
from softmoe.base.errors import UserError
from softmoe.study.params import Study
from softmoe.experiments.e1_theorem import SYNTHETIC_LOSS
from softmoe.experiments.e3_calibration import CALIBRATION
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.e4_latency import LATENCY
from softmoe.experiments.training import CURVES, TRAINING
from test_figures import (SAMPLES, latency_rows, sample_params, selection_rows,
                          synthetic_loss_rows, training_rows, write_sample_tables)


@pytest.mark.parametrize("name", sorted(tables.names()))
def test_write_then_read_gives_the_same_table(tmp_path, name):
    frame = SAMPLES[name]()
    shuffled = frame[list(reversed(frame.columns))].assign(extra="dropped")
    tables.write(tables.path(tmp_path, name), shuffled, name)
    assert pd.read_csv(tables.path(tmp_path, name), nrows=0).columns.tolist() == tables.columns(name)
    back = tables.read(tmp_path, name)
    pd.testing.assert_frame_equal(back, frame[tables.columns(name)], check_dtype=False)
    assert not list(tmp_path.glob(".*tmp")), "temporary files left behind"


def test_every_schema_is_consistent():
    for name in tables.names():
        schema = tables.schema(name)
        assert len(set(schema.columns)) == len(schema.columns), name
        assert set(schema.numeric) <= set(schema.columns), name
        assert set(schema.required) <= set(schema.columns), name
    # the calibration table is the selection table plus how long each model trained
    assert tables.columns(CALIBRATION.name) == tables.columns(SELECTION.name) + ["epochs", "steps"]
    assert train.CURVE_COLUMNS == tables.columns(CURVES.name)[:6] and "n" not in train.CURVE_COLUMNS


@pytest.mark.parametrize("name", sorted(tables.names()))
def test_write_refuses_rows_without_a_column(tmp_path, name):
    frame = SAMPLES[name]().drop(columns=[tables.columns(name)[-1]])
    with pytest.raises(ValueError, match=rf"{name} rows lack column\(s\) \['{tables.columns(name)[-1]}'\]"):
        tables.write(tables.path(tmp_path, name), frame, name)
    assert not tables.path(tmp_path, name).exists()


@pytest.mark.parametrize("name", [SELECTION.name, TRAINING.name])
def test_missing_required_table_is_a_user_error(tmp_path, name):
    folder = write_sample_tables(tmp_path / "tables", skip=(name,))
    with pytest.raises(UserError, match=rf"{name}\.csv: required table not found; run `softmoe tabulate`"):
        tables.read(folder, name)


def test_missing_optional_table_is_none(tmp_path):
    folder = write_sample_tables(tmp_path / "tables", skip=(LATENCY.name, CALIBRATION.name, "hardware"))
    assert tables.read(folder, LATENCY.name) is None and tables.read(folder, CALIBRATION.name) is None
    assert tables.read_hardware(folder) is None


@pytest.mark.parametrize("name, column", [(SELECTION.name, "renormalize"), (TRAINING.name, "test_accuracy"),
                                          (LATENCY.name, "median_ms"), (SYNTHETIC_LOSS.name, "tokens"),
                                          (CURVES.name, "seed"), (SELECTION.name, "images"),
                                          (SYNTHETIC_LOSS.name, "variance")])
def test_missing_column_names_file_and_column(tmp_path, name, column):
    folder = write_sample_tables(tmp_path / "tables", **{name: SAMPLES[name]().drop(columns=[column])})
    with pytest.raises(UserError, match=rf"{name}\.csv: missing column\(s\) {column}; expected "):
        tables.read(folder, name)


def test_non_numeric_value_names_column_and_row(tmp_path):
    sel = selection_rows().astype({"accuracy": object})
    sel.loc[5, "accuracy"] = "n/a%"
    folder = write_sample_tables(tmp_path / "tables", selection=sel)
    with pytest.raises(UserError, match=r"selection\.csv: column 'accuracy' must be numeric; row 7 holds 'n/a%'"):
        tables.read(folder, SELECTION.name)


def test_empty_required_cell_names_column_and_row(tmp_path):
    loss = synthetic_loss_rows()
    loss.loc[3, "variance"] = None
    folder = write_sample_tables(tmp_path / "tables", synthetic_loss=loss)
    with pytest.raises(UserError, match=r"synthetic_loss\.csv: column 'variance' is empty in row 5"):
        tables.read(folder, SYNTHETIC_LOSS.name)


def test_unknown_method_and_bad_flag_are_rejected(tmp_path):
    sel = selection_rows()
    sel.loc[3, "method"] = "best"
    folder = write_sample_tables(tmp_path / "t1", selection=sel)
    with pytest.raises(UserError, match=r"column 'method' holds \['best'\]"):
        tables.read(folder, SELECTION.name)
    sel = selection_rows().astype({"renormalize": object})
    sel.loc[3, "renormalize"] = "maybe"
    folder = write_sample_tables(tmp_path / "t2", selection=sel)
    with pytest.raises(UserError, match=r"'renormalize' must be True or False"):
        tables.read(folder, SELECTION.name)
    cal = SAMPLES[CALIBRATION.name]()
    cal.loc[0, "method"] = "best"
    folder = write_sample_tables(tmp_path / "t3", calibration=cal)
    with pytest.raises(UserError, match=r"calibration\.csv: column 'method' holds \['best'\]"):
        tables.read(folder, CALIBRATION.name)


def test_unreadable_or_empty_required_table(tmp_path):
    folder = write_sample_tables(tmp_path / "tables")
    (folder / "training.csv").write_text("")
    with pytest.raises(UserError, match=r"training\.csv: not a readable CSV"):
        tables.read(folder, TRAINING.name)
    training_rows().iloc[:0].to_csv(folder / "training.csv", index=False)
    with pytest.raises(UserError, match=r"training\.csv: the table has no rows"):
        tables.read(folder, TRAINING.name)
    # an optional table may be empty (a step that had nothing to do)
    latency_rows().iloc[:0].to_csv(folder / "latency.csv", index=False)
    assert tables.read(folder, LATENCY.name).empty


def test_bad_json_files(tmp_path):
    folder = write_sample_tables(tmp_path / "tables")
    assert tables.read_hardware(folder)["cpu"] == "Intel Xeon (2 cores)"
    (folder / "hardware.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"hardware\.json: expected a JSON object; rerun `softmoe latency`"):
        tables.read_hardware(folder)
    (folder / "hardware.json").write_text("{oops")
    with pytest.raises(UserError, match=r"hardware\.json: not valid JSON"):
        tables.read_hardware(folder)
    (tmp_path / "claims.json").write_text("{oops")
    with pytest.raises(UserError, match=r"claims\.json: not valid JSON .*; fix it"):
        tables.read_json(tmp_path / "claims.json", "fix it")


def test_concat_adds_the_run_keys_and_keeps_only_the_current_grid(tmp_path, monkeypatch):
    """tabulate: per-run metrics.json (one row each) with n and seed from the run folder."""
    monkeypatch.chdir(tmp_path)
    params = sample_params(experts=[2, 4], seeds=[0])
    rows = training_rows(ns=[2, 4, 8])
    for r in rows.to_dict("records"):
        run = tmp_path / "results" / "train" / "mnist5k" / f"n{r['n']}-s{r['seed']}"
        run.mkdir(parents=True)
        metrics = {k: v for k, v in r.items() if k not in ("n", "seed")} | {"nested": {"x": 1}}
        (run / "metrics.json").write_text(json.dumps(metrics))
    study = Study.of(params)
    tables.concat(study, TRAINING.name, tmp_path / "training.csv")
    out = pd.read_csv(tmp_path / "training.csv")
    assert out.columns.tolist() == tables.columns(TRAINING.name)
    assert out["n"].tolist() == [2, 4]                     # n = 8 is not in the grid
    pd.testing.assert_frame_equal(out, rows[rows["n"] <= 4][tables.columns(TRAINING.name)].reset_index(drop=True),
                                  check_dtype=False)
    (tmp_path / "results" / "train" / "mnist5k" / "n4-s0" / "metrics.json").unlink()
    with pytest.raises(UserError, match=r"n4-s0/metrics\.json: input file not found"):
        tables.concat(study, TRAINING.name, tmp_path / "training.csv")
