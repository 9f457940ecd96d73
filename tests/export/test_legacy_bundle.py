"""A bundle and a checkpoint of an earlier edgeseg, kept byte for byte in tests/data/legacy: they
still run and give the labels that edgeseg gave then, or are refused in one line that says what
to do.

``bundle-2026-11-25/`` and ``checkpoint-2026-11-25.pt`` were written by commit c155593
(2026-11-25, parity gate v1, no ``scored`` in the manifest, parity rows naming ``run_on`` rather
than a runner): ``edgeseg data synth --cases 6 --size 32 --slices 8 --seed 0``, ``edgeseg train
--size 32 --base 4 --depth 2 --epochs 15 --lr 2e-2 --no-augment``, ``edgeseg export best.pt
--formats onnx --int8 --calib PHANTOM --max-dice-drop-int8 1.0``. ``labels-2026-11-25-R-P.npy``
is that commit's ``edgeseg predict BUNDLE phantom-hu-6x40x28.npy --backend R:P``: the input is a
(6, 40, 28) cut of a phantom volume, not the model's 32x32, so resizing is on the path too. They
were recorded on a CPU with VNNI; tests/legacy_labels.py says how INT8 labels are held to them on
one without.

Its INT8 graph imports ai.onnx.ml 5 (and other domains no node uses), as that commit's onnxruntime
quantiser wrote it; onnxruntime before 1.18 refuses it, in one line that names both remedies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.legacy_labels import BUNDLE, HU, LEGACY, assert_old_labels, old_labels

CHECKPOINT = LEGACY / "checkpoint-2026-11-25.pt"
BACKENDS = ["onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32", "openvino:int8"]
NEWER_OPSET = "it imports opset 5 of domain ai.onnx.ml"


def _ort_refuses_the_int8_graph() -> bool:
    import onnxruntime

    return tuple(int(part) for part in onnxruntime.__version__.split(".")[:2]) < (1, 18)


def _edgeseg(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, EDGESEG_CACHE_DIR=str(cwd / "cache")))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_old_bundle_gives_the_labels_it_gave_then(backend, tmp_path, monkeypatch):
    if backend.startswith("openvino"):
        pytest.importorskip("openvino")
    from edgeseg.runtime import Segmenter

    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    if backend == "onnxruntime:int8" and _ort_refuses_the_int8_graph():
        from edgeseg.errors import BackendError

        with pytest.raises(BackendError, match=f"{NEWER_OPSET}.*install onnxruntime>=1.18 or export the bundle again"):
            Segmenter.load(BUNDLE, backend=backend)
        return
    with Segmenter.load(BUNDLE, backend=backend) as seg:
        labels = seg.predict_volume(np.load(HU))
    assert_old_labels(labels, backend)


def test_predict_on_the_old_bundle_writes_the_old_labels(tmp_path, assert_one_line_error):
    from edgeseg.runtime.selection import cpu_lacks_vnni

    out = tmp_path / "labels.npy"
    proc = _edgeseg("predict", BUNDLE, HU, "--out", out, "--backend", "onnxruntime:int8", "--quiet", cwd=tmp_path)
    if _ort_refuses_the_int8_graph():
        assert_one_line_error(proc, NEWER_OPSET)
        assert not out.exists()
        return
    assert proc.returncode == 0, proc.stderr
    assert_old_labels(np.load(out), "onnxruntime:int8")
    if cpu_lacks_vnni():  # named, it runs, and the user is told its sums saturate here
        assert "saturate u8 x s8 sums on this CPU (no VNNI); re-export with --int8-scheme cpu" in proc.stderr


def test_inspect_sends_a_gate_v1_bundle_to_a_new_export_not_to_edgeseg_gate(tmp_path, assert_one_line_error):
    """inspect notes that the old manifest records no scored runners; the remedy it names must be
    one that works: edgeseg gate refuses a bundle of gate v1, so the note says to export again
    (it named edgeseg gate, which then refused)."""
    proc = _edgeseg("inspect", BUNDLE, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    note = next(line for line in proc.stdout.splitlines() if "records no runners the parity gate scored" in line)
    assert "export the bundle again" in note and "edgeseg gate BUNDLE" not in note
    assert "(gate v1)" in proc.stdout

    pytest.importorskip("torch")
    bundle = shutil.copytree(BUNDLE, tmp_path / "bundle")
    proc = _edgeseg("gate", bundle, "--checkpoint", CHECKPOINT, cwd=tmp_path)
    assert_one_line_error(proc, "passed parity gate v1, not today's v2")
    assert "export the bundle again" in proc.stderr
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == {p.name: p.read_bytes() for p in BUNDLE.iterdir()}


def test_the_old_checkpoint_exports_to_a_bundle_with_the_old_labels(tmp_path):
    """The checkpoint holds the single keep_largest flag of its time and no spec fit; a new export
    of it runs the same network and post-processing as the bundle exported then."""
    pytest.importorskip("torch")
    # The checkpoint names the folder it was trained on, which only the machine that made it had;
    # the gate's slices come from a phantom made as that one was (the network exported is the same).
    phantom = tmp_path / "phantom"
    proc = _edgeseg("data", "synth", "--out", phantom, "--cases", "6", "--size", "32", "--slices", "8", "--seed", "0",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = _edgeseg("export", CHECKPOINT, "--out", tmp_path / "bundle", "--formats", "onnx", "--verify-data", phantom,
                    "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "labels.npy"
    proc = _edgeseg("predict", tmp_path / "bundle", HU, "--out", out, "--backend", "onnxruntime:fp32", "--quiet",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(out), old_labels("onnxruntime:fp32"))


def test_auto_runs_the_old_int8_graph_only_on_the_runner_its_gate_ran(tmp_path):
    """The 2026-11-25 manifest lists no scored runners; its parity rows show the gate ran ONNX
    Runtime alone. auto must not take openvino:int8, which that gate never ran (it did before),
    while the FP32 graph, which needs no gate, stays open to OpenVINO; inspect gives the reason.
    On an x86 CPU without VNNI auto takes neither INT8 runner (the graph's sums saturate there)
    and inspect says so for onnxruntime too. What auto takes gives the labels it gave then."""
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.selection import cpu_lacks_vnni, skip_reasons

    rows = json.loads((BUNDLE / "parity.json").read_text())["results"]
    gated = {row["run_on"].rsplit("-", 1)[0] for row in rows if row["file"] == "model.int8.onnx"}
    assert gated == {"onnxruntime"}
    manifest = read_manifest(BUNDLE)
    int8, fp32 = manifest.artifact("onnx", "int8"), manifest.artifact("onnx", "fp32")
    assert "not scored by the export gate" in (skip_reasons(int8, "openvino") or "")
    assert "not scored" not in (skip_reasons(int8, "onnxruntime") or "")
    assert skip_reasons(fp32, "openvino") is None and skip_reasons(fp32, "onnxruntime") is None
    proc = _edgeseg("inspect", BUNDLE, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("onnx-int8  model.int8.onnx"))
    assert "openvino (not scored by the export gate: a manifest without scored runners vouches for onnxruntime " \
           "alone on an INT8 graph; edgeseg gate scores it)" in row
    if cpu_lacks_vnni():
        assert "onnxruntime (on this machine: INT8 graph of the tensorrt scheme (exported before schemes were " \
               "recorded): its signed activations saturate u8 x s8 sums on this CPU (no VNNI); re-export with " \
               "--int8-scheme cpu)" in row
    else:
        assert "onnxruntime (" not in row
    out = tmp_path / "labels.npy"
    proc = subprocess.run([sys.executable, "-m", "edgeseg", "predict", str(BUNDLE), str(HU), "--out", str(out),
                           "--backend", "auto"], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, EDGESEG_CACHE_DIR=str(tmp_path / "cache"), EDGESEG_BACKEND_PROBE="0"))
    assert proc.returncode == 0, proc.stderr
    picked = re.search(r"^loaded .*: backend (\S+) \(", proc.stderr, re.MULTILINE).group(1)
    assert picked != "openvino:int8" and not (cpu_lacks_vnni() and picked.endswith(":int8")), picked
    assert_old_labels(np.load(out), picked)
