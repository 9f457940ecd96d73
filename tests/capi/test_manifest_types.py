"""libedgeseg and the Python runtime read a manifest's JSON types alike: an integer field holds a
JSON integer (not ``8.0``, ``8e0`` or ``true``, which Python's json reads as a float or a bool),
an object field an object or null, and both refuse the rest with a message naming the field.
A fixed batch size in the input tensor is honoured by both: the model gets that many slices per
call, a shorter batch padded with zero slices whose logits are dropped."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from edgeseg.errors import BundleError, DataError

ES_OK, ES_EBUNDLE = 0, 16


def _copy(bundle, tmp_path, edit=None, text=None):
    """A copy of ``bundle`` whose manifest ``edit`` changed (a dict edit) and ``text`` rewrote."""
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    if edit:
        edit(manifest)
    raw = json.dumps(manifest, indent=1)
    if text:
        old, new = text
        assert raw.count(old) == 1, old
        raw = raw.replace(old, new)
    (copy / "manifest.json").write_text(raw)
    return copy


def _classes(options):
    return lambda m: m["postprocess"].update(classes={"1": options})


def _artifacts(**changes):
    return lambda m: [a.update(changes) for a in m["artifacts"]]


REFUSED = {
    "max-batch-8.0": ({"edit": lambda m: m.update(max_batch=8.0)}, "max_batch must be a whole number"),
    "max-batch-8e0": ({"text": ('"max_batch": 8,', '"max_batch": 8e0,')}, "max_batch must be a whole number"),
    "max-batch-true": ({"edit": lambda m: m.update(max_batch=True)}, "max_batch must be a whole number"),
    "max-batch-2^21": ({"edit": lambda m: m.update(max_batch=1 << 21)}, "max_batch must be a whole number from 1 to"),
    "schema-1.0": ({"edit": lambda m: m.update(schema=1.0)}, "integer 'schema' field"),
    "spec-schema-1.0": ({"edit": lambda m: m["spec"].update(schema=1.0)}, "PreprocessSpec schema"),
    "spec-schema-true": ({"edit": lambda m: m["spec"].update(schema=True)}, "PreprocessSpec schema"),
    "spec-size-64.0": ({"edit": lambda m: m["spec"].update(size=[64.0, 64])}, "size must be a pair of whole numbers"),
    "spec-size-text": ({"edit": lambda m: m["spec"].update(size=["64", 64])}, "size must be a pair of whole numbers"),
    "spec-size-true": ({"edit": lambda m: m["spec"].update(size=[True, 64])}, "size must be a pair of whole numbers"),
    "spec-window-true": ({"edit": lambda m: m["spec"].update(window=[True, 255])}, "window must be a pair of numbers"),
    "spec-window-text": ({"edit": lambda m: m["spec"].update(window=["0", 255])}, "window must be a pair of numbers"),
    "shape-1.0": ({"edit": lambda m: m["inputs"][0].update(shape=[-1, 1.0, 64, 64])},
                  "shape must be a list of integers"),
    "shape-true": ({"edit": lambda m: m["outputs"][0].update(shape=[-1, 2, True, 64])},
                   "shape must be a list of integers"),
    "bytes-float": ({"edit": lambda m: [a.update(bytes=float(a["bytes"])) for a in m["artifacts"]]},
                    "bytes must be a whole number"),
    # libedgeseg holds JSON numbers as doubles and takes integers up to 10^15 (exact to 2^53)
    "bytes-10^20": ({"edit": _artifacts(bytes=10**20)}, "bytes must be a whole number"),
    "bytes-10^15+1": ({"edit": _artifacts(bytes=10**15 + 1)}, "bytes must be a whole number"),
    "shape-10^20": ({"edit": lambda m: m["inputs"][0].update(shape=[-1, 1, 10**20, 64])},
                    "shape must be a list of integers"),
    "schema-10^20": ({"edit": lambda m: m.update(schema=10**20)}, "integer 'schema' field"),
    "min-pixels-4.0": ({"edit": _classes({"min_pixels": 4.0})}, "min_pixels must be an integer"),
    "removed-to-0.0": ({"edit": _classes({"removed_to": 0.0})}, "removed_to must be another class number"),
    "postprocess-list": ({"edit": lambda m: m.update(postprocess=[])}, "postprocess must be a JSON object"),
    "postprocess-false": ({"edit": lambda m: m.update(postprocess=False)}, "postprocess must be a JSON object"),
    "model-list": ({"edit": lambda m: m.update(model=[1])}, "model must be a JSON object"),
    "source-text": ({"edit": lambda m: m.update(source="x")}, "source must be a JSON object"),
    "extra-list": ({"edit": _artifacts(extra=[1])}, "extra must be a JSON object"),
    "excluded-list": ({"edit": _artifacts(excluded=[])}, "'excluded' must map backend names to reasons"),
    "fixed-batch-above-max": ({"edit": lambda m: m["inputs"][0].update(shape=[16, 1, 64, 64])},
                              "fixed batch of 16, above max_batch 8"),
    # the float is the value Python keeps: the last of a repeated key
    "repeated-key-float-last": ({"text": ('"max_batch": 8,', '"max_batch": 8, "max_batch": 8.0,')},
                                "max_batch must be a whole number"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_both_refuse_a_field_of_the_wrong_json_type(case, bundle, tmp_path, run_checks):
    from edgeseg.runtime import Segmenter

    options, words = REFUSED[case]
    copy = _copy(bundle, tmp_path, **options)
    with pytest.raises(BundleError) as caught:
        Segmenter.load(copy, backend="openvino:fp32")
    code, message, _ = run_checks("open", copy, "fp32")
    assert code == ES_EBUNDLE, message
    assert words in message and words in str(caught.value), (message, str(caught.value))
    assert "\n" not in str(caught.value)


ACCEPTED = {
    # floats elsewhere in the text come before the integers; the reader must not lose count
    "floats-before-integers": {"edit": lambda m: m["model"].update(scale=[1.5, 2.0, 4], note="1.0 8e0 [2.5]"),
                               "text": ('"scale": [\n   1.5,', '"scale": [\n   -1.5e-1,')},
    "float-fields-as-integers": {"edit": lambda m: m["spec"].update(window=[0, 255], mean=0, std=1)},
    "min-ml-float": {"edit": _classes({"min_ml": 0.0, "min_pixels": 0})},
    "nulls-for-objects": {"edit": lambda m: m.update(model=None, source=None, postprocess=None)},
    "repeated-key-integer-last": {"text": ('"max_batch": 8,', '"max_batch": 8.0, "max_batch": 8,')},
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_both_accept_json_integers_where_floats_are_elsewhere(case, bundle, tmp_path, run_checks):
    from edgeseg.runtime import Segmenter

    copy = _copy(bundle, tmp_path, **ACCEPTED[case])
    with Segmenter.load(copy, backend="openvino:fp32") as seg:
        assert seg.max_batch == 8
    code, message, _ = run_checks("open", copy, "fp32")
    assert (code, message) == (ES_OK, "opened")


def _fixed_batch_bundle(bundle, tmp_path, batch: int):
    """A copy of ``bundle`` whose FP32 ONNX graph and manifest fix the batch axis at ``batch``:
    a model that takes exactly that many slices per call."""
    import onnx

    copy = _copy(bundle, tmp_path, edit=lambda m: [t.update(shape=[batch, *t["shape"][1:]])
                                                   for t in (*m["inputs"], *m["outputs"])])
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "fp32")
    model = onnx.load(copy / entry["file"])
    for tensor in (*model.graph.input, *model.graph.output):
        tensor.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, copy / entry["file"])
    data = (copy / entry["file"]).read_bytes()
    entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return copy


@pytest.mark.parametrize("batch", [1, 3])
def test_a_fixed_batch_is_honoured_by_both(batch, bundle, phantom_hu, programs, run_raw, run_checks, tmp_path):
    """Python refused every volume of a fixed-batch-1 bundle (batches of 8 for the model's 1),
    and a single slice of a fixed-batch-3 one; libedgeseg sent batches of 8 to a model that takes
    3. Now both send exactly `batch` slices, and the masks are the dynamic model's."""
    from edgeseg.runtime import Segmenter

    with Segmenter.load(bundle, backend="openvino:fp32") as seg:
        expected = seg.predict_volume(phantom_hu)  # 6 slices: batches of 3 + 3, or 1 each
        expected_first = seg.predict(phantom_hu[0])
    assert expected.any()
    fixed = _fixed_batch_bundle(bundle, tmp_path, batch)
    with Segmenter.load(fixed, backend="openvino:fp32") as seg:
        assert int(np.count_nonzero(seg.predict_volume(phantom_hu[:5]) != expected[:5])) == 0  # 3 + 2 padded
        assert int(np.count_nonzero(seg.predict(phantom_hu[0]) != expected_first)) == 0
        # a batch size above the fixed batch is refused before any slice is read or processed
        with pytest.raises(DataError, match=rf"batch_size must be an integer in 1\.\.{batch} \(the model's fixed batch\)"):
            seg.predict_volume(phantom_hu[:5], batch_size=batch + 1)
    volume = run_raw(programs["c"], fixed, "fp32", phantom_hu[:5], tmp_path)
    assert int(np.count_nonzero(volume != expected[:5])) == 0
    slices = run_raw(programs["checks"], fixed, "fp32", phantom_hu[:5], tmp_path, mode="slices")
    assert int(np.count_nonzero(slices[0] != expected_first)) == 0
