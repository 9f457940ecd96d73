"""es_open's "auto" on a bundle whose manifest lists no ``scored`` runners reads them from
``parity.json``'s rows, by the rules of the Python runtime (edgeseg/runtime/parity_record.py),
only where the report is this bundle's: rows naming its artifacts by file and sha256, a failed
row only for a runner the manifest excludes, a row for every artifact. A report that is not
vouches for nothing, and the manifest's own rule holds (the INT8 graph skipped on OpenVINO).

The expected artifact is written by hand from each variant (tests/old_bundles.py); the Python
runtime's choice on the same copy must be the same.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.old_bundles import VARIANTS, old_bundle

ES_OK, ES_EBUNDLE = 0, 16
# what es_open(..., "auto") opens for each reading of the report ("neither": nothing)
OPENS = {"rows": "onnx-int8", "none": "onnx-fp32", "fp32": "onnx-fp32", "neither": None}


def _python_auto_choice(bundle) -> str | None:
    """The ONNX artifact the Python rules let OpenVINO's auto run first (int8, fp32, fp16)."""
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.parity_record import with_parity_record
    from edgeseg.runtime.selection import skip_reasons

    manifest = with_parity_record(bundle, read_manifest(bundle))
    entries = {e.precision: e for e in manifest.artifacts if e.format == "onnx"}
    return next((f"onnx-{p}" for p in ("int8", "fp32", "fp16") if p in entries and not skip_reasons(entries[p], "openvino")),
                None)


def _auto(run_checks, bundle) -> tuple[str | None, str]:
    code, message, lines = run_checks("open", bundle, "auto")
    if code != ES_OK:
        return None, message
    return next(line.split("\t")[1] for line in lines if line.startswith("artifact\t")), message


@pytest.mark.parametrize("variant", VARIANTS)
def test_auto_reads_the_rows_of_this_bundles_report_alone(variant, bundle, tmp_path, run_checks):
    copy = old_bundle(bundle, tmp_path / "bundle", variant)
    expected = OPENS[VARIANTS[variant][1]]
    opened, message = _auto(run_checks, copy)
    assert opened == expected, message
    assert _python_auto_choice(copy) == expected
    if expected is None:  # the report counts, and names no OpenVINO run: the gate's record, not the old rule
        assert "onnx-int8: not scored by the export gate: openvino was not installed" in message
        assert "onnx-fp32: not scored by the export gate: openvino was not installed" in message
    code, _, _ = run_checks("open", copy, "int8")
    assert code == ES_OK  # by precision it still opens


@pytest.mark.parametrize("damage", ["missing", "a-link-outside", "nan", "not-an-object", "a-fifo"])
def test_a_report_that_cannot_be_read_as_the_bundles_vouches_for_nothing(damage, bundle, tmp_path, run_checks):
    copy = old_bundle(bundle, tmp_path / "bundle", "as-exported")
    report = copy / "parity.json"
    if damage == "missing":
        report.unlink()
    elif damage == "a-link-outside":  # the same rows, from a file outside the bundle folder
        outside = tmp_path / "elsewhere.json"
        report.rename(outside)
        report.symlink_to(outside)
    elif damage == "nan":  # Python's json reads NaN, libedgeseg's parser does not: neither counts it
        report.write_text(report.read_text().replace('"slices": 16', '"slices": NaN', 1))
        assert "NaN" in report.read_text()
    elif damage == "not-an-object":
        report.write_text(json.dumps([json.loads(report.read_text())]))
    else:
        report.unlink()
        os.mkfifo(report)  # nothing writes it: reading would wait forever
    assert _auto(run_checks, copy)[0] == "onnx-fp32"
    assert _python_auto_choice(copy) == "onnx-fp32"


def test_a_manifest_listing_scored_is_not_widened_by_its_report(bundle, tmp_path, run_checks):
    """``scored`` in the manifest is the record; rows naming OpenVINO do not add to it."""
    copy = old_bundle(bundle, tmp_path / "bundle", "as-exported")
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        entry["scored"] = ["onnxruntime"] if entry["format"] == "onnx" else ["torchscript"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    opened, message = _auto(run_checks, copy)
    assert opened is None and "onnx-int8: not scored by the export gate" in message
    assert _python_auto_choice(copy) is None
