"""Bad input from C: every case is a status code and a message naming the problem, never a crash.

Each case runs ``capi_checks`` (tests/capi/capi_checks.c), which exits 0 whenever the library
returned; a crash shows as a non-zero exit. Expected codes come from edgeseg.h.
"""

from __future__ import annotations

import json
import shutil

import pytest

import edgeseg
from edgeseg.spec import PreprocessSpec

ES_OK, ES_EINVAL, ES_ENONFINITE, ES_EBUNDLE, ES_EDATA = 0, 1, 3, 16, 18


def test_open_reports_labels_spec_and_artifact(bundle, run_checks):
    code, message, lines = run_checks("open", bundle, "fp32")
    assert (code, message) == (ES_OK, "opened")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "artifact\tonnx-fp32" in lines
    assert f"version\t{edgeseg.__version__}" in lines
    labels = [line.split("\t")[1:] for line in lines if line.startswith("label\t")]
    assert {int(k): name for k, name in labels} == {int(k): v for k, v in manifest["labels"].items()}
    spec_json = next(line.split("\t", 1)[1] for line in lines if line.startswith("spec\t"))
    assert PreprocessSpec.from_dict(json.loads(spec_json)) == PreprocessSpec.from_dict(manifest["spec"])


def test_auto_precision_prefers_int8(bundle, run_checks):
    _, _, lines = run_checks("open", bundle, "auto")
    assert "artifact\tonnx-int8" in lines


def test_missing_bundle(tmp_path, run_checks):
    code, message, _ = run_checks("open", tmp_path / "nowhere")
    assert code == ES_EBUNDLE and "manifest.json" in message and "nowhere" in message


def test_null_bundle_path(run_checks):
    code, message, _ = run_checks("open-null")
    assert code == ES_EINVAL and "bundle_dir" in message


def test_missing_bundle_without_error_struct(tmp_path, run_checks):
    code, message, _ = run_checks("open-no-err", tmp_path / "nowhere")
    assert code == -1 and "no" in message


def test_tampered_artifact(bundle, tmp_path, run_checks):
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "int8")
    data = bytearray((copy / entry["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    (copy / entry["file"]).write_bytes(bytes(data))
    code, message, _ = run_checks("open", copy, "int8")
    assert code == ES_EBUNDLE and "sha256" in message and "tampered" in message and entry["file"] in message


def test_truncated_artifact(bundle, tmp_path, run_checks):
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["precision"] == "fp32" and a["format"] == "onnx")
    (copy / entry["file"]).write_bytes((copy / entry["file"]).read_bytes()[:100])
    code, message, _ = run_checks("open", copy, "fp32")
    assert code == ES_EBUNDLE and "100 bytes" in message


def _edited_bundle(bundle, tmp_path, edit):
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update(schema=2), ["schema 2", "newer", "upgrade"]),
    (lambda m: m.pop("labels"), ["lacks", "labels"]),
    (lambda m: m["spec"].update(window=[400, -100]), ["window", "low < high"]),
    (lambda m: m["spec"].update(shear=1), ["unknown PreprocessSpec field", "shear"]),
    (lambda m: m["spec"].update(size=[32, 32]), ["input shape", "spec size"]),
    (lambda m: m["labels"].pop("0"), ["class 0"]),
    (lambda m: m["postprocess"].update(resize="cubic"), ["postprocess.resize"]),
    (lambda m: [a.update(file="../model.onnx") for a in m["artifacts"]], ["plain file name"]),
    (lambda m: m["outputs"][0].update(shape=[-1, 5, *m["outputs"][0]["shape"][2:]]), ["output shape", "spec and labels"]),
    # the post-processing the training chose may filter class 1 (a run's choice): cleared, so that
    # the one fault is the missing label, not also a filter of a class the labels no longer name
    (lambda m: (m["labels"].pop("1"), m["postprocess"].update(classes={})), ["output shape", "spec and labels"]),
], ids=["future-schema", "no-labels", "inverted-window", "unknown-spec-field", "spec-size-mismatch",
        "no-background", "bad-resize-mode", "path-escape", "output-classes", "labels-fewer-than-outputs"])
def test_invalid_manifest(edit, words, bundle, tmp_path, run_checks):
    code, message, _ = run_checks("open", _edited_bundle(bundle, tmp_path, edit))
    assert code == ES_EBUNDLE
    for word in words:
        assert word in message


def test_manifest_not_json(bundle, tmp_path, run_checks):
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    (copy / "manifest.json").write_text('{"schema": 1, "spec": ')
    code, message, _ = run_checks("open", copy)
    assert code == ES_EBUNDLE and "not readable JSON" in message


def test_manifest_with_trailing_bytes_is_refused_as_python_refuses_it(bundle, tmp_path, run_checks):
    from edgeseg.errors import BundleError
    from edgeseg.runtime.manifest import read_manifest

    copy = shutil.copytree(bundle, tmp_path / "bundle")
    (copy / "manifest.json").write_text((copy / "manifest.json").read_text() + "\ngarbage")
    code, message, _ = run_checks("open", copy)
    assert code == ES_EBUNDLE and "not readable JSON" in message
    with pytest.raises(BundleError):
        read_manifest(copy)


def test_unknown_precision(bundle, run_checks):
    code, message, _ = run_checks("open", bundle, "int4")
    assert code == ES_EINVAL and "int4" in message


@pytest.mark.parametrize("case, code, words", [
    ("null-segmenter", ES_EINVAL, ["segmenter is NULL"]),
    ("null-hu", ES_EINVAL, ["hu is NULL"]),
    ("null-labels", ES_EINVAL, ["labels is NULL"]),
    ("zero-rows", ES_EINVAL, ["positive", "0 x 80"]),
    ("negative-cols", ES_EINVAL, ["positive", "96 x -5"]),
    ("zero-slices", ES_EINVAL, ["positive", "0 slice"]),
    ("one-row", ES_EDATA, ["too small", "at least 2"]),
    ("too-large", ES_EDATA, ["8193 x 80", "limit of 8192"]),
    ("bad-dtype", ES_EINVAL, ["dtype code 42"]),
    ("float16-dtype", ES_EINVAL, ["dtype code 4"]),
    ("short-stride", ES_EINVAL, ["row_stride 79", "cols 80"]),
    ("short-slice-stride", ES_EINVAL, ["slice_stride 7679"]),
    ("huge-stride", ES_EINVAL, ["too large to address"]),
    ("nan", ES_ENONFINITE, ["1 NaN", "slice 1"]),
    ("normalised", ES_EDATA, ["looks normalised"]),
    ("beyond-hu", ES_EDATA, ["1e+06", "CT stores HU"]),
    ("stored-values", ES_EDATA, ["values span 24..1084, none below 0 HU", "RescaleIntercept"]),
])
def test_bad_segment_call(case, code, words, bundle, run_checks):
    got, message, _ = run_checks("call", bundle, case)
    assert got == code, message
    for word in words:
        assert word in message


def test_null_error_struct_is_allowed(bundle, run_checks):
    got, message, _ = run_checks("call", bundle, "null-err")
    assert got == ES_EINVAL and message == ""  # the status alone reports it


@pytest.mark.parametrize("case", ["good", "good-volume", "clipped-at-0"])
def test_good_calls_succeed(case, bundle, run_checks):
    got, message, _ = run_checks("call", bundle, case)
    assert (got, message) == (ES_OK, "")


@pytest.mark.parametrize("kind", ["junk", "truncated", "with-a-tail", "malformed-inside"])
def test_model_openvino_cannot_read(kind, bundle, tmp_path, programs):
    """A file whose manifest hash matches but which is no ONNX graph: a backend status with one
    line. A file that is not an ONNX ModelProto at its top level never reaches OpenVINO, whose
    other frontends would print to stderr trying it; one malformed only inside reaches it and
    is refused by it (docs/c-api.md says what it may print then)."""
    import hashlib
    import subprocess

    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "fp32")
    real = (copy / entry["file"]).read_bytes()
    junk = {"junk": b"not an onnx graph\n" * 64, "truncated": real[: len(real) // 2], "with-a-tail": real + b"garbage",
            # ir_version 7, then a graph (field 7) of five bytes that are no GraphProto
            "malformed-inside": b"\x08\x07\x3a\x05hello"}[kind]
    (copy / entry["file"]).write_bytes(junk)
    entry.update(bytes=len(junk), sha256=hashlib.sha256(junk).hexdigest())
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = subprocess.run([str(programs["checks"]), "open", str(copy), "fp32"], capture_output=True, text=True,
                            timeout=300)
    code, message = result.stdout.splitlines()[0].split("\t", 1)
    assert int(code) == 17 and message.startswith(f"openvino could not load {entry['file']}"), message
    if kind != "malformed-inside":
        assert "not an ONNX model" in message and result.stderr == "", result.stderr[-2000:]


def test_a_graph_that_does_not_match_its_manifest_is_a_backend_status(bundle, tmp_path, swap_graph, run_checks):
    """The graph gives 5 classes (or half the size) where the manifest says 2: a status, never
    labels that es_labels does not name. OpenVINO's message keeps its cause, on one line."""
    for classes, stride in ((5, 1), (2, 2)):
        copy = shutil.copytree(bundle, tmp_path / f"bundle-{classes}-{stride}")
        swap_graph(copy, classes, stride, precision="int8")  # what the "call" cases open
        code, message, _ = run_checks("call", copy, "good")
        assert code == 17 and "does not match its manifest" in message, message
    fixed = shutil.copytree(bundle, tmp_path / "bundle-batch-1")
    swap_graph(fixed, 2, 1, 1, precision="int8")  # a batch of 1 only: a call of several slices fails inside OpenVINO
    code, message, _ = run_checks("call", fixed, "good-volume")
    assert code == 17 and message.startswith("openvino could not run") and "\n" not in message, message
    assert "Exception from" not in message and len(message.split(": ", 2)[-1]) > 20, message


def test_a_manifest_that_is_not_a_regular_file_is_refused_without_waiting(bundle, tmp_path, run_checks):
    import os

    copy = shutil.copytree(bundle, tmp_path / "bundle")
    (copy / "manifest.json").unlink()
    os.mkfifo(copy / "manifest.json")  # opening it for reading would wait for a writer forever
    code, message, _ = run_checks("open", copy)
    assert code == ES_EBUNDLE and "not a regular file" in message


def test_threads_sharing_a_segmenter_get_the_lone_call_mask(bundle, run_checks):
    code, message, _ = run_checks("threads", bundle, 4)
    assert (code, message) == (ES_OK, "4 threads x 5 calls, 0 masks differ")


def test_unusable_cache_folder_still_opens(bundle, tmp_path, monkeypatch, run_checks):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    code, message, _ = run_checks("call", bundle, "good")
    assert (code, message) == (ES_OK, "")


def test_both_runtimes_take_slices_up_to_the_same_side(bundle, programs, run_raw, run_checks, phantom_hu, tmp_path):
    """ES_MAX_SIDE (edgeseg.h) is input_checks.MAX_SIDE: 8193 rows or columns are refused by both
    with the same words, 8192 by 64 is segmented by both to the same mask. The 8192 x 64 slice is
    a phantom slice stretched to that size, which the model resizes back to what it was trained
    on: its mask is the phantom's liver, whatever the training run (a block of tissue in air was
    a mask only where the run happened to call it liver)."""
    import re
    from pathlib import Path

    import numpy as np

    from edgeseg.errors import DataError
    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.input_checks import MAX_SIDE

    header = (Path(__file__).resolve().parents[2] / "csrc" / "edgeseg.h").read_text()
    assert re.search(r"#define ES_MAX_SIDE (\d+)", header).group(1) == str(MAX_SIDE) == "8192"
    with Segmenter.load(bundle, backend="openvino:fp32") as seg:
        for case, shape in (("too-large", (8193, 80)), ("too-wide", (96, 8193))):
            code, message, _ = run_checks("call", bundle, case)
            with pytest.raises(DataError) as caught:
                seg.predict(np.zeros(shape, np.int16))
            assert code == ES_EDATA and message.startswith(str(caught.value)), (message, str(caught.value))
            assert f"{shape[0]} x {shape[1]}" in message and "limit of 8192" in message
        with pytest.raises(DataError, match="limit of 8192"):
            seg.predict_volume(np.zeros((2, 64, 8193), np.int16))
        source = phantom_hu[phantom_hu.shape[0] // 2]
        rows = np.arange(8192) * source.shape[0] // 8192
        columns = np.arange(64) * source.shape[1] // 64
        hu = np.ascontiguousarray(source[np.ix_(rows, columns)][None])
        expected = seg.predict(hu[0])
        assert expected.any()
    got = run_raw(programs["checks"], bundle, "fp32", hu, tmp_path, mode="slices")
    assert int(np.count_nonzero(got[0] != expected)) == 0


def test_a_slice_of_another_size_is_refused_in_the_same_words_where_the_bundle_never_resizes(bundle, tmp_path,
                                                                                              run_checks):
    import numpy as np

    from edgeseg.errors import DataError
    from edgeseg.runtime import Segmenter

    copy = _edited_bundle(bundle, tmp_path, lambda m: m.update(resize_input=False))
    with Segmenter.load(copy, backend="openvino:int8") as seg:
        for case, hu, words in (("good", np.zeros((96, 80), np.int16), "slice is 96x80"),
                                ("good-volume", np.zeros((2, 96, 80), np.int16), "volume slices are 96x80")):
            code, message, _ = run_checks("call", copy, case)
            with pytest.raises(DataError) as caught:
                seg.predict(hu) if hu.ndim == 2 else seg.predict_volume(hu)
            assert code == ES_EDATA and message == str(caught.value), (message, str(caught.value))
            assert message == f"{words} but this bundle takes 64x64 only (it was exported without resizing)"


def test_a_model_with_fields_of_a_later_onnx_opens_as_in_python(bundle, tmp_path, run_checks):
    """A ModelProto with fields this form check does not name in its table (configuration, 26,
    of onnx 1.23; fields of a later onnx, length-delimited and 32-bit) loads in ONNX Runtime, as
    protobuf skips unknown fields: libedgeseg opens it too."""
    import hashlib

    import onnxruntime

    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "fp32")
    later = (copy / entry["file"]).read_bytes() + b"\xd2\x01\x00" + b"\xc2\x02\x03abc" + b"\xcd\x02\x01\x02\x03\x04"
    (copy / entry["file"]).write_bytes(later)
    entry.update(bytes=len(later), sha256=hashlib.sha256(later).hexdigest())
    (copy / "manifest.json").write_text(json.dumps(manifest))
    onnxruntime.InferenceSession(str(copy / entry["file"]), providers=["CPUExecutionProvider"])  # Python reads it
    code, message, _ = run_checks("open", copy, "fp32")
    assert code == 0, message


def test_a_long_bundle_path_keeps_the_problem_in_the_message(bundle, tmp_path, run_checks):
    """Messages are 512 bytes (ES_MESSAGE_SIZE): a path that long once pushed the problem's words
    out. The middle of the message gives way ("bundle /start... ... end/of/path: problem")."""
    deep = tmp_path.joinpath(*["é" * 40 + "-" + "d" * 50] * 6)  # multi-byte characters at every cut
    copy = shutil.copytree(bundle, deep / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "int8")
    with open(copy / entry["file"], "ab") as handle:
        handle.write(b"\0")
    code, message, _ = run_checks("open", copy, "int8")
    assert len(str(copy)) > 600 and code == ES_EBUNDLE
    assert len(message.encode()) <= 511 and message.encode().decode("utf-8") == message
    assert message.startswith(f"bundle {str(copy)[:40]}") and " ... " in message
    assert message.endswith(f"/bundle: {entry['file']} is {entry['bytes'] + 1} bytes, manifest says {entry['bytes']} "
                            "(tampered or truncated)")


@pytest.mark.parametrize("spec", [{"window": [-1e308, 1e308]}, {"std": 1e-300}, {"mean": 1e300}],
                         ids=["window-span-overflows", "tiny-std", "huge-mean"])
def test_a_spec_that_overflows_the_model_input_is_refused_as_in_python(spec, bundle, tmp_path, run_checks):
    """A spec that passes the manifest checks but whose window and normalisation give NaN or inf
    in float32: Python's runner refuses the batch; libedgeseg ran the model on it and returned a
    mask (OpenVINO's ReLU turns NaN into 0)."""
    import numpy as np

    from edgeseg.errors import DataError
    from edgeseg.runtime import Segmenter

    copy = _edited_bundle(bundle, tmp_path, lambda m: m["spec"].update(spec))
    with Segmenter.load(copy, backend="openvino:int8") as seg, pytest.raises(DataError) as caught:
        seg.predict(np.zeros((96, 80), np.int16))
    code, message, _ = run_checks("call", copy, "good")
    assert code == ES_ENONFINITE and message.startswith(str(caught.value)), (message, str(caught.value))
