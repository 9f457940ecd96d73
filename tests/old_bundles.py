"""Copies of the suite's bundle as an export of 2026-12-06 wrote it: no ``scored`` in the manifest,
the gate's runners only in ``parity.json``'s rows, and that report changed in the ways a report of
another export, of replaced artifacts, or an edited one differs from the bundle's own.

Each variant names what ``auto`` should make of the report (the tests' oracle, written by hand
from the variant, not computed by the code under test): ``rows`` (the report counts: OpenVINO ran
on both ONNX graphs), or ``none`` (it vouches for nothing: the manifest's own rule, ONNX Runtime
alone on the INT8 graph, FP32 by ``excluded``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def _rows(report: dict, runner: str, file: str) -> list[dict]:
    return [row for row in report["results"] if row.get("runner") == runner and row.get("file") == file]


def _strip_sha(report, manifest):
    for row in report["results"]:
        row.pop("sha256")


def _other_sha(report, manifest):
    _rows(report, "torchscript", "model.ts")[0]["sha256"] = "0" * 64


def _other_file(report, manifest):
    report["results"].append(dict(_rows(report, "openvino", "model.onnx")[0], file="model.fp16.onnx"))


def _failed_not_excluded(report, manifest):
    _rows(report, "openvino", "model.int8.onnx")[0]["passed"] = False


def _failed_and_excluded(report, manifest):
    _rows(report, "openvino", "model.int8.onnx")[0]["passed"] = False
    next(a for a in manifest["artifacts"] if a["file"] == "model.int8.onnx")["excluded"] = {"openvino": "dice drop 0.2 > 0.05"}


def _passed_but_excluded(report, manifest):
    """A report that says a runner passed where the manifest excludes it (one forged with the
    manifest's hashes): the manifest's exclusion holds."""
    next(a for a in manifest["artifacts"] if a["file"] == "model.int8.onnx")["excluded"] = {"openvino": "dice drop 0.2 > 0.05"}


def _no_openvino(report, manifest):
    report["results"] = [row for row in report["results"] if row.get("runner") != "openvino"]


def _nul_runner(report, manifest):
    _rows(report, "onnxruntime", "model.onnx")[0]["runner"] = "onnxruntime\0"


def _no_rows_for_ts(report, manifest):
    report["results"] = [row for row in report["results"] if row["file"] != "model.ts"]


def _runner_not_text(report, manifest):
    _rows(report, "onnxruntime", "model.onnx")[0]["runner"] = 7


# variant -> (edit of the report and manifest, what auto makes of the report for openvino:
# "rows" both ONNX graphs scored, "none" the manifest's own rule, "fp32" only FP32 scored
# (but excluded on INT8), "neither" rows that count and name no openvino)
VARIANTS = {
    "as-exported": (None, "rows"),
    "rows-without-sha256": (_strip_sha, "none"),  # 2026-12-01 to -05: tied by name alone
    "a-row-of-other-bytes": (_other_sha, "none"),
    "a-row-of-another-file": (_other_file, "none"),
    "a-failed-row-not-excluded": (_failed_not_excluded, "none"),
    "a-failed-row-excluded": (_failed_and_excluded, "fp32"),
    "a-passed-row-excluded": (_passed_but_excluded, "fp32"),
    "no-openvino-rows": (_no_openvino, "neither"),
    "a-nul-in-a-runner": (_nul_runner, "none"),
    "an-artifact-without-rows": (_no_rows_for_ts, "none"),
    "a-runner-not-text": (_runner_not_text, "none"),
}


def old_bundle(bundle: Path, dest: Path, variant: str) -> Path:
    """A copy of ``bundle`` at ``dest`` without ``scored`` and ``training_fov``, its parity.json edited as ``variant``."""
    copy = Path(shutil.copytree(bundle, dest))
    manifest = json.loads((copy / "manifest.json").read_text())
    report = json.loads((copy / "parity.json").read_text())
    for entry in manifest["artifacts"]:
        entry.pop("scored", None)
    manifest.pop("training_fov", None)  # recorded from 2026-12-07 on
    edit = VARIANTS[variant][0]
    if edit:
        before = json.dumps([report, manifest], sort_keys=True)
        edit(report, manifest)
        assert json.dumps([report, manifest], sort_keys=True) != before, f"variant {variant} edited nothing"
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (copy / "parity.json").write_text(json.dumps(report, indent=2))
    return copy
