"""A runner the export gate never ran on an artifact (its library was not installed where the bundle
was exported) is not picked by ``auto`` where it is installed; ``inspect`` and the ``auto`` log say
why, naming it still runs it with a warning, and ``edgeseg gate`` scores it on the deployment
machine and records the verdict. A bundle exported with OpenVINO blocked from import stands for
one exported where it is absent; the same checkpoint exported where it is installed is the oracle
for the rows ``edgeseg gate`` adds."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import BUNDLE_CALIBRATION

pytest.importorskip("openvino")
EXPORT = ["--int8", "--calib", BUNDLE_CALIBRATION, "--max-dice-drop-int8", "0.05", "--formats", "onnx", "--quiet"]
UNSCORED = "not scored by the export gate: openvino was not installed where the bundle was exported"


def _edgeseg(*args, cwd):
    return subprocess.run([sys.executable, "-m", "edgeseg", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, EDGESEG_CACHE_DIR=str(cwd / "cache")))


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def without_openvino(trained_checkpoint, tmp_path_factory):
    """(checkpoint, bundle exported where openvino cannot be imported, bundle exported where it can)."""
    from tests.conftest import run_without

    tmp = tmp_path_factory.mktemp("gate-coverage")
    # One INT8 cache: both exports write the same graphs, so their rows are comparable.
    export = [*EXPORT, "--cache-dir", str(tmp / "export-cache")]
    proc = run_without(["-m", "edgeseg", "export", str(trained_checkpoint), "--out", str(tmp / "bundle"), *export],
                       tmp, absent=("openvino",))
    assert proc.returncode == 0, proc.stderr
    proc = _edgeseg("export", trained_checkpoint, "--out", tmp / "full", *export, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return trained_checkpoint, tmp / "bundle", tmp / "full"


def test_auto_skips_an_unscored_runner_and_says_why(without_openvino, tmp_path, monkeypatch, caplog):
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.selection import candidates, select_runner

    _, exported, _ = without_openvino
    bundle = shutil.copytree(exported, tmp_path / "bundle")
    assert [a["scored"] for a in _manifest(bundle)["artifacts"]] == [["onnxruntime"], ["onnxruntime"]]
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    manifest = read_manifest(bundle)
    assert {c.runner for c in candidates(manifest)} >= {"onnxruntime", "openvino"}  # installed here
    assert {c.runner for c in candidates(manifest, gated_only=True)} == {"onnxruntime"}
    with caplog.at_level(logging.INFO, logger="edgeseg.runtime.selection"):
        runner = select_runner(bundle, manifest, "auto")
    assert runner.name == "onnxruntime"
    runner.close()
    assert f"backend auto skips openvino:int8, openvino:fp32: {UNSCORED}" in caplog.text

    proc = _edgeseg("inspect", bundle, "--json", tmp_path / "inspect.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"openvino ({UNSCORED}" in proc.stdout
    record = json.loads((tmp_path / "inspect.json").read_text())
    for artifact in record["artifacts"]:
        assert artifact["scored"] == ["onnxruntime"] and artifact["auto_skips"]["openvino"].startswith(UNSCORED)

    # Named, it runs, with one warning line saying it was not gated.
    volume = tmp_path / "case.nii.gz"
    proc = _edgeseg("data", "synth", "--out", tmp_path / "ph", "--cases", "1", "--size", "64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    source = next((tmp_path / "ph" / "imagesTr").glob("*.nii.gz"))
    proc = _edgeseg("predict", bundle, source, "--out", volume, "--backend", "openvino:int8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("edgeseg: warning:")]
    assert warnings == [f"edgeseg: warning: backend openvino:int8 on model.int8.onnx: {UNSCORED}; edgeseg gate "
                        "scores it; auto never picks it"]
    assert volume.is_file() and "backend openvino:int8" in proc.stderr


def test_gate_scores_the_runner_as_an_export_with_it_installed_would(without_openvino, tmp_path, monkeypatch):
    from edgeseg.export.audit import row_verdict
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.selection import candidates

    checkpoint, exported, full = without_openvino
    bundle = shutil.copytree(exported, tmp_path / "bundle")
    before = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    proc = _edgeseg("gate", bundle, "--checkpoint", checkpoint, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    after = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert after != before and f"sha256 is now {after[:12]} (was {before[:12]})" in proc.stdout

    # The oracle: the rows of an export where openvino was installed, on the same slices.
    rows = {(r["file"], r.get("runner")): r for r in json.loads((bundle / "parity.json").read_text())["results"]}
    oracle = {(r["file"], r.get("runner")): r for r in json.loads((full / "parity.json").read_text())["results"]}
    assert set(rows) == set(oracle)
    for key, expected in oracle.items():
        got = {k: v for k, v in rows[key].items() if k not in ("rescored", "sha256")}
        assert got == {k: v for k, v in expected.items() if k != "sha256"}, key
    assert {key[1] for key, row in rows.items() if "rescored" in row} == {"openvino"}

    # Each verdict as the row's own numbers give it: passed -> auto may pick it, failed -> excluded.
    manifest = read_manifest(bundle)
    eligible = {(c.entry.file, c.runner) for c in candidates(manifest, gated_only=True)}
    for entry in manifest.artifacts:
        assert entry.scored == ("onnxruntime", "openvino")
        passed, _ = row_verdict(rows[entry.file, "openvino"])
        assert ((entry.file, "openvino") in eligible) == passed == ("openvino" not in entry.excluded)
    proc = _edgeseg("inspect", bundle, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "scored after the export by edgeseg gate: openvino on model.onnx; openvino on model.int8.onnx" in proc.stdout

    # Nothing left to score: nothing is written, the bundle keeps its identity.
    proc = _edgeseg("gate", bundle, "--checkpoint", checkpoint, cwd=tmp_path)
    assert proc.returncode == 0 and "nothing to score" in proc.stdout
    assert hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest() == after


def test_a_failed_verdict_excludes_the_runner(without_openvino, tmp_path):
    """The recording of a failing row, on a real row made to fail by its own numbers (which
    OpenVINO's verdict on this model is cannot be chosen): excluded from auto, and the bundle
    stays one inspect passes."""
    from edgeseg.export.regate import _record
    from edgeseg.runtime.manifest import read_manifest

    checkpoint, exported, full = without_openvino
    bundle = shutil.copytree(exported, tmp_path / "bundle")
    row = next(r for r in json.loads((full / "parity.json").read_text())["results"]
               if r.get("runner") == "openvino" and r["precision"] == "int8")
    row.update(dice_drop=row["limit"] + 0.01, passed=False,
               class_drop={name: row["limit"] + 0.01 for name in row["class_drop"]})
    row["sha256"] = read_manifest(bundle).artifact("onnx", "int8").sha256
    parity = json.loads((bundle / "parity.json").read_text())
    _record(bundle, read_manifest(bundle), parity, [row], {"data": parity["data"]}, echo=lambda text: None)
    entry = read_manifest(bundle).artifact("onnx", "int8")
    assert entry.scored == ("onnxruntime", "openvino")
    assert entry.excluded["openvino"].startswith(f"dice drop {row['dice_drop']:.4f} > {row['limit']}")
    proc = _edgeseg("inspect", bundle, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "excluded from auto: openvino on model.int8.onnx (dice drop" in proc.stdout


def test_a_bundle_without_scored_keeps_its_meaning_and_gate_records_it(without_openvino, tmp_path):
    """A manifest from before the gate recorded its runners: where the parity rows name each
    artifact by file and sha256 they are the record (here they name OpenVINO: openvino:int8 is
    auto's). Where they do not (a report from 2026-12-01 to -05, rows without sha256), auto judges
    the FP32 graph by excluded alone and runs the INT8 graph only on ONNX Runtime, the one runner
    every gate ran; inspect says so, and edgeseg gate fills scored (openvino:int8 is auto's again)."""
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.parity_record import with_parity_record
    from edgeseg.runtime.selection import candidates, unscored_reason

    checkpoint, _, full = without_openvino
    bundle = shutil.copytree(full, tmp_path / "bundle")
    manifest = _manifest(bundle)
    for artifact in manifest["artifacts"]:
        del artifact["scored"]
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    gated = {c.label for c in candidates(with_parity_record(bundle, read_manifest(bundle)), gated_only=True)}
    assert {"openvino:int8", "openvino:fp32", "onnxruntime:int8"} <= gated
    parity = json.loads((bundle / "parity.json").read_text())
    for row in parity["results"]:
        row.pop("sha256")
    (bundle / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    gated = {c.label for c in candidates(with_parity_record(bundle, read_manifest(bundle)), gated_only=True)}
    assert {"openvino:fp32", "onnxruntime:int8"} <= gated and "openvino:int8" not in gated
    proc = _edgeseg("inspect", bundle, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note: the manifest records no runners the parity gate scored on model.onnx, model.int8.onnx" in proc.stdout
    proc = _edgeseg("gate", bundle, "--checkpoint", checkpoint, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [a["scored"] for a in _manifest(bundle)["artifacts"]] == [["onnxruntime", "openvino"]] * 2
    assert unscored_reason(read_manifest(bundle).artifact("onnx", "int8"), "openvino") is None
    assert json.loads((bundle / "parity.json").read_text()) == parity  # its rows were the gate's: none added


@pytest.mark.parametrize("edit, fragment", [
    (lambda a: a["scored"].append("onnxruntime-gpu"),
     "the manifest lists onnxruntime-gpu as scored on model.onnx, but parity.json has no row of it"),
    (lambda a: a["scored"].remove("openvino"),
     "parity.json has a row of model.onnx on openvino, but the manifest does not list openvino as scored on it"),
])
def test_inspect_refuses_a_scored_list_the_rows_do_not_show(edit, fragment, without_openvino, tmp_path):
    _, _, full = without_openvino
    bundle = shutil.copytree(full, tmp_path / "bundle")
    manifest = _manifest(bundle)
    edit(manifest["artifacts"][0])
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    proc = _edgeseg("inspect", bundle, cwd=tmp_path)
    assert proc.returncode == 2 and fragment in proc.stdout + proc.stderr


def test_gate_refuses_another_checkpoint_before_any_work(without_openvino, tmp_path, assert_one_line_error):
    _, exported, _ = without_openvino
    bundle = shutil.copytree(exported, tmp_path / "bundle")
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the checkpoint")
    before = (bundle / "manifest.json").read_bytes()
    proc = _edgeseg("gate", bundle, "--checkpoint", other, cwd=tmp_path)
    assert_one_line_error(proc, f"checkpoint {other} is not the one {bundle} was exported from")
    assert (bundle / "manifest.json").read_bytes() == before


def test_a_ctrl_c_between_the_two_writes_lands_after_both(without_openvino, tmp_path):
    """parity.json and manifest.json change as one set: a Ctrl-C as the first lands is held until
    the second has, so the bundle never holds rows its manifest does not list (which an earlier
    manifest without ``scored`` would take as scored, not excluded, on the next run)."""
    from tests.interrupting import assert_whole_set, interrupted_between_renames, snapshot, stopped_once

    checkpoint, exported, _ = without_openvino
    bundle = shutil.copytree(exported, tmp_path / "bundle")
    outputs = [bundle / "parity.json", bundle / "manifest.json"]
    before = snapshot(outputs)
    proc = interrupted_between_renames(outputs, "gate", bundle, "--checkpoint", checkpoint, "--quiet")
    stopped_once(proc)
    assert assert_whole_set(outputs, before)


def test_rows_of_a_killed_run_are_scored_again_on_a_manifest_without_scored(without_openvino, tmp_path):
    """A gate killed outright between its two writes leaves its rows in parity.json, and a
    manifest from before ``scored`` unchanged: the next run scores those runners again rather
    than take a leftover row (here a failing one) as scored and not excluded."""
    from edgeseg.export.audit import row_verdict
    from edgeseg.runtime.manifest import read_manifest

    checkpoint, exported, full = without_openvino
    bundle = shutil.copytree(exported, tmp_path / "bundle")
    manifest = _manifest(bundle)
    for artifact in manifest["artifacts"]:
        del artifact["scored"]
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    row = next(r for r in json.loads((full / "parity.json").read_text())["results"]
               if r.get("runner") == "openvino" and r["precision"] == "int8")
    row.update(dice_drop=row["limit"] + 0.01, passed=False, rescored=0,
               class_drop={name: row["limit"] + 0.01 for name in row["class_drop"]})
    parity = json.loads((bundle / "parity.json").read_text())
    parity["results"].append(row)
    (bundle / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")

    proc = _edgeseg("gate", bundle, "--checkpoint", checkpoint, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {(r["file"], r.get("runner")): r for r in json.loads((bundle / "parity.json").read_text())["results"]}
    for entry in read_manifest(bundle).artifacts:
        assert entry.scored == ("onnxruntime", "openvino")
        passed, _ = row_verdict(rows[entry.file, "openvino"])
        assert passed == ("openvino" not in entry.excluded), entry.file
    proc = _edgeseg("inspect", bundle, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("backend", ["torchscript", "openvino:fp16"])
def test_gate_refuses_a_runner_no_artifact_runs_on(backend, without_openvino, tmp_path, assert_one_line_error):
    """Named, a runner that runs none of the bundle's artifacts is an error, not "nothing to score"."""
    checkpoint, exported, _ = without_openvino
    bundle = shutil.copytree(exported, tmp_path / "bundle")
    proc = _edgeseg("gate", bundle, "--checkpoint", checkpoint, "--backend", backend, cwd=tmp_path)
    assert_one_line_error(proc, f"no artifact of the bundle runs on {backend}; it has model.onnx, model.int8.onnx")


@pytest.mark.parametrize("backend, said", [
    ("auto", "edgeseg gate scores runners by name, not 'auto'"),
    ("http://127.0.0.1:9/models/edgeseg", "edgeseg gate scores runners by name, not 'http://127.0.0.1:9/models/edgeseg'"),
    ("nosuch", "unknown backend 'nosuch'; edgeseg gate takes --backend NAME or NAME:PRECISION"),
    ("all", "edgeseg gate takes no --backend all: omit --backend to score every installed runner, or give --backend "
            "NAME or NAME:PRECISION"),
])
def test_gate_refuses_auto_a_server_and_an_unknown_name_listing_only_what_it_takes(backend, said, without_openvino,
                                                                                   tmp_path, assert_one_line_error):
    """The runtime's list of known backends offers auto and a server's address, which predict takes and
    the gate cannot score: its line names the runners, not 'unknown backend 'auto'; known: auto, ...'."""
    checkpoint, exported, _ = without_openvino
    bundle = shutil.copytree(exported, tmp_path / "bundle")
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    proc = _edgeseg("gate", bundle, "--checkpoint", checkpoint, "--backend", backend, cwd=tmp_path)
    assert_one_line_error(proc, said)
    assert "openvino" in proc.stderr and "auto," not in proc.stderr and "http://HOST" not in proc.stderr
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
