"""A fold's export record (cv --int8): which gate made it, and an unreadable one is a clear error."""

import json

import pytest

from edgeseg.errors import DataError
from edgeseg.export.fold_export import EXPORT_RECORD, export_is_current, read_record, record_gate
from edgeseg.export.profiles import ExportSettings


def test_a_record_is_current_only_under_todays_gate(tmp_path):
    settings = ExportSettings(formats=("onnx",), int8=True)
    assert not export_is_current(tmp_path, settings)  # nothing exported yet
    (tmp_path / EXPORT_RECORD).write_text(json.dumps({"gate": []}))
    assert record_gate(read_record(tmp_path / EXPORT_RECORD)) == "v1" and not export_is_current(tmp_path, settings)
    (tmp_path / EXPORT_RECORD).write_text(json.dumps({"gate_version": 2, "structure_px": 16, "gate": []}))
    assert export_is_current(tmp_path, settings)
    assert not export_is_current(tmp_path, settings.override(structure_px=8))


@pytest.mark.parametrize("text", ["{bad", "[1, 2]", "\udcff"])
def test_an_unreadable_record_says_to_remove_it(tmp_path, text):
    path = tmp_path / EXPORT_RECORD
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(DataError, match="remove it to export the fold again"):
        read_record(path)
