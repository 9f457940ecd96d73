"""An ONNX graph that keeps a tensor in another file is refused: the engines would read that file,
and the manifest's sha256 covers only the ``.onnx`` file, so weights swapped beside it would run
unchecked (and a cached compiled model, keyed by that sha256, would outlive the swap)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.errors import BundleError
from edgeseg.runtime import Segmenter
from edgeseg.runtime.onnx_form import external_tensor

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.external_data_helper import _get_all_tensors, uses_external_data  # noqa: E402

JPG = sorted((Path(__file__).resolve().parents[1] / "data" / "msd_liver_slices" / "images").iterdir())[0]


def _externalise(tensor, location: str) -> bytes:
    """Move ``tensor``'s bytes out of the graph, naming ``location``; return them."""
    data = numpy_helper.to_array(tensor).tobytes()
    for name in ("raw_data", "float_data", "int64_data", "int32_data"):
        tensor.ClearField(name)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return data


def _resign(bundle: Path, name: str) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / name).read_bytes()
    for entry in manifest["artifacts"]:
        if entry["file"] == name:
            entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def external_bundle(bundle_copy) -> Path:
    """The test bundle with the FP32 graph's largest initializer in ``weights.bin`` beside it,
    the manifest's sha256 and size recorded for the new ``model.onnx``: what an engine loads and
    runs as it is."""
    model = onnx.load(str(bundle_copy / "model.onnx"))
    tensor = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    (bundle_copy / "weights.bin").write_bytes(_externalise(tensor, "weights.bin"))
    onnx.save(model, str(bundle_copy / "model.onnx"))
    _resign(bundle_copy, "model.onnx")
    return bundle_copy


def test_predict_refuses_a_graph_with_external_weights_and_writes_nothing(external_bundle, tmp_path,
                                                                          assert_one_line_error):
    out = tmp_path / "out" / "labels.npy"
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(external_bundle), str(JPG), "--out",
                           str(out), "--backend", "onnxruntime:fp32", "--quiet"], capture_output=True, text=True,
                          timeout=300)
    assert_one_line_error(proc, "model.onnx keeps tensor")
    assert "'weights.bin'" in proc.stderr and "sha256 does not cover" in proc.stderr
    assert not out.parent.exists() or not list(out.parent.iterdir())


@pytest.mark.parametrize("backend", ["onnxruntime:fp32", "openvino:fp32", "auto"])
def test_the_segmenter_refuses_it_before_any_engine_reads_the_file(external_bundle, backend):
    with pytest.raises(BundleError, match="keeps tensor .* in another file"):
        Segmenter.load(external_bundle, backend=backend)


def _placements():
    """Models with one external tensor in each place onnx's own walker finds tensors: an
    initializer, a Constant node's attribute, and an initializer of an If node's branch."""
    value = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    add = helper.make_node("Add", ["x", "w"], ["y"])
    top = helper.make_graph([add], "g", [x], [y], initializer=[value])
    constant = helper.make_graph([helper.make_node("Constant", [], ["w"], value=value), add], "g", [x], [y])
    branch = helper.make_graph([add], "b", [], [y], initializer=[value])
    cond = numpy_helper.from_array(np.array(True), "c")
    nested = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                               "g", [x], [y], initializer=[cond])
    return [helper.make_model(g) for g in (top, constant, nested)]


@pytest.mark.parametrize("index", range(3))
def test_external_tensors_are_found_wherever_onnx_itself_finds_them(tmp_path, index):
    model = _placements()[index]
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    assert external_tensor(path) is None
    target = [t for t in _get_all_tensors(model) if t.name == "w"][-1]  # the If's else branch holds the last
    _externalise(target, "../elsewhere.bin")
    onnx.save(model, str(path))
    assert [uses_external_data(t) for t in _get_all_tensors(model)].count(True) == 1  # the oracle
    assert external_tensor(path) == (target.name, "../elsewhere.bin")


def test_every_placement_is_found_and_the_first_in_the_file_is_named(tmp_path):
    """The placements the C runtime is checked on too (tests/onnx_placements.py): sparse tensors,
    attribute lists, functions and training graphs, and with two external tensors the first in the
    file's order (the walk once named the last one)."""
    from tests.onnx_placements import placements

    for case, (data, expected) in placements().items():
        path = tmp_path / f"{case}.onnx"
        path.write_bytes(data)
        assert external_tensor(path) == expected, case


def test_a_group_does_not_hide_an_external_tensor(external_bundle):
    """ONNX Runtime and OpenVINO skip an unknown group field (wire types 3 and 4); the walk once
    gave up on it and left the graph to them, which then read weights.bin unchecked."""
    import onnxruntime

    from tests.onnx_placements import group

    path = external_bundle / "model.onnx"
    path.write_bytes(path.read_bytes() + group(99, group(100)))
    _resign(external_bundle, "model.onnx")
    onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # the engine loads it as it is
    with pytest.raises(BundleError, match="keeps tensor .* in another file"):
        Segmenter.load(external_bundle, backend="onnxruntime:fp32")


def test_a_varint_where_an_entry_holds_text_is_not_taken_for_a_length(tmp_path):
    """An external_data entry whose key is a varint (protobuf skips it as a field of another wire
    type): the walk once made bytes(2**62) of it and died of MemoryError instead of answering."""
    from tests.onnx_placements import key, varint

    tensor = key(8, 2) + b"\x01w" + key(13, 2) + varint(10) + key(1, 0) + varint(1 << 62)
    graph = key(5, 2) + varint(len(tensor)) + tensor
    path = tmp_path / "model.onnx"
    path.write_bytes(key(1, 0) + b"\x08" + key(7, 2) + varint(len(graph)) + graph)
    assert external_tensor(path) == ("w", "?")
