"""A bundle's manifest is read strictly (no field's meaning is guessed from a wrong type), its
tensors must agree with its spec and labels, and a graph that does not do what the manifest says
(another number of classes, another size, a fixed batch) is a one-line BackendError at run time,
never labels the bundle does not name or an engine's traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeseg.errors import BackendError, BundleError
from edgeseg.runtime.manifest import read_manifest


def _edit(bundle: Path, **changes) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.update(changes)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("changes", "message"), [
    ({"resize_input": "false"}, "resize_input must be true or false"),
    ({"max_batch": 2.5}, "max_batch must be a whole number"),
    ({"max_batch": "8"}, "max_batch must be a whole number"),
    ({"schema": True}, "no integer 'schema'"),
    ({"labels": {"0": "background", "1_0": "liver"}}, "labels must map class numbers to names"),
    ({"labels": {"0": "background", "-1": "liver"}}, "labels must map class numbers to names"),
    ({"labels": {"0": "background", "1": 7}}, "labels must map class numbers to names"),
    ({"labels": {"0": "background", "1": "liver", "01": "again"}}, "name a class twice"),
    ({"labels": {"0": "background", "300": "liver"}}, "does not fit uint8 labels"),
    # what no C string carries, and what is no Unicode text: libedgeseg refuses both too
    ({"labels": {"0": "background", "1": "liv\0er"}}, "holds a NUL character"),
    ({"labels": {"0": "background", "1": "liv\ud800er"}}, "unpaired surrogate"),
    ({"source": {"note\0": 1}}, "holds a NUL character"),
    # the labels name one class fewer than the network's output channels
    ({"labels": {"0": "background"}}, "the spec and labels say [-1, 1,"),
])
def test_a_manifest_field_of_the_wrong_type_or_meaning_is_refused(bundle_copy, changes, message):
    _edit(bundle_copy, **changes)
    with pytest.raises(BundleError) as caught:
        read_manifest(bundle_copy)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_artifact_sizes_and_tensor_shapes_must_be_integers(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["artifacts"][0]["bytes"] = str(manifest["artifacts"][0]["bytes"])
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bytes must be a whole number"):
        read_manifest(bundle_copy)
    manifest["artifacts"][0]["bytes"] = int(manifest["artifacts"][0]["bytes"])
    manifest["outputs"][0]["shape"] = [-1, 2.0, *manifest["outputs"][0]["shape"][2:]]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="shape must be a list of integers"):
        read_manifest(bundle_copy)


def test_a_manifest_with_a_byte_order_mark_is_read_as_the_c_runtime_reads_it(bundle_copy):
    text = (bundle_copy / "manifest.json").read_text()
    (bundle_copy / "manifest.json").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_manifest(bundle_copy).to_dict()["labels"] == json.loads(text)["labels"]


@pytest.mark.parametrize("backend", ["onnxruntime:fp32", "openvino:fp32"])
@pytest.mark.parametrize(("classes", "stride", "batch", "message"), [
    (5, 1, "N", "returned logits of shape [2, 5,"),      # more classes than the labels name
    (2, 2, "N", "returned logits of shape [2, 2, 32, 32]"),  # half the size
    (2, 1, 1, "could not run model.onnx"),               # a fixed batch of 1, the manifest says up to 8
])
def test_a_graph_that_does_not_match_its_manifest_is_a_backend_error(bundle_copy, swap_graph, backend, classes, stride,
                                                                     batch, message):
    from edgeseg.runtime.runners import runner_class
    from edgeseg.runtime.segmenter import Segmenter

    cls = runner_class(backend.split(":")[0])
    if not cls.available():
        pytest.skip(f"{cls.name} is not installed")
    size = read_manifest(bundle_copy).spec.size[0]
    swap_graph(bundle_copy, classes, stride, batch)
    hu = np.full((2, size, size), 40.0, np.float32)
    try:
        with Segmenter.load(bundle_copy, backend=backend) as seg:
            seg.predict_volume(hu, batch_size=2)
    except BackendError as exc:
        assert message in str(exc) and "\n" not in str(exc), str(exc)
    else:
        pytest.fail("a graph that does not match its manifest ran")


def test_a_large_max_batch_allocates_the_batches_in_use_not_max_batch(bundle_copy):
    """max_batch may be up to 2^20 (libedgeseg's limit too); the input buffers were sized by it,
    2 x 2^20 slices (a MemoryError, or gigabytes taken), where the calls use batches of 8."""
    import tracemalloc

    from edgeseg.runtime.segmenter import Segmenter

    _edit(bundle_copy, max_batch=1 << 20)
    size = read_manifest(bundle_copy).spec.size
    with Segmenter.load(bundle_copy, backend="onnxruntime:fp32") as seg:
        tracemalloc.start()
        try:
            labels = seg.predict_volume(np.full((3, *size), 40, np.int16))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert labels.shape == (3, *size)
    assert peak < 64 << 20, peak
