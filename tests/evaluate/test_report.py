"""Tables, JSON and CSV writers: nan becomes "-", null or an empty cell; numpy values convert."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from edgeseg.report.output import format_table, to_json_compatible, write_csv, write_json


def test_format_table_aligns_columns_and_shows_nan_as_dash():
    rows = [
        {"run": "a", "dice": 0.912345, "hd95": math.nan, "epochs": 12, "lr": 1e-5},
        {"run": "long-name", "dice": np.float32(0.5), "hd95": 3.25, "epochs": np.int64(7), "lr": 0.001},
    ]
    expected = "\n".join([
        "run          dice    hd95  epochs      lr",
        "---------  ------  ------  ------  ------",
        "a          0.9123       -      12   1e-05",
        "long-name  0.5000  3.2500       7  0.0010",
    ])
    assert format_table(rows, ["run", "dice", "hd95", "epochs", "lr"]) == expected


def test_format_table_shows_missing_keys_and_lists():
    table = format_table([{"run": "x", "size": [256, 256]}, {"run": "yy"}], ["run", "size"])
    assert table.splitlines()[2:] == ["x    [256, 256]", "yy   -"]


def test_write_json_turns_nan_and_inf_into_null_and_converts_numpy(tmp_path):
    path = tmp_path / "out" / "eval.json"
    write_json(path, {
        "dice": np.float32(0.5),
        "hd95": float("nan"),
        "worst": np.float64(np.inf),
        "counts": np.arange(3, dtype=np.int16),
        "per_class": {np.int64(1): {"hd95": np.nan}, 2: (1.5, -np.inf)},
        "ok": np.bool_(True),
    })
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "dice": 0.5,
        "hd95": None,
        "worst": None,
        "counts": [0, 1, 2],
        "per_class": {"1": {"hd95": None}, "2": [1.5, None]},
        "ok": True,
    }
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temporary file left


def test_write_json_refuses_unknown_objects_and_leaves_no_file(tmp_path):
    with pytest.raises(TypeError, match="object"):
        write_json(tmp_path / "x.json", {"a": object()})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError):
        to_json_compatible({(1, 2): 3})


def test_write_csv_writes_header_empty_cells_for_nan_and_json_lists(tmp_path):
    path = tmp_path / "table.csv"
    rows = [{"run": "a", "dice": np.float64(0.125), "hd95": math.nan, "size": [256, 256]}, {"run": "b, c"}]
    write_csv(path, rows, ["run", "dice", "hd95", "size"])
    with path.open(newline="") as handle:
        read = list(csv.reader(handle))
    assert read == [
        ["run", "dice", "hd95", "size"],
        ["a", "0.125", "", "[256, 256]"],
        ["b, c", "", "", ""],
    ]
