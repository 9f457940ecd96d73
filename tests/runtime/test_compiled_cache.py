"""The engines' compiled-model caches: a second load uses them and computes the same logits.

ONNX Runtime keeps its optimised graph and OpenVINO its compiled blob under
``$EDGESEG_CACHE_DIR`` (a fresh folder per test, see conftest), keyed by the artifact's sha256.
The oracle for the logits is a plain session on the bundle's file, outside the cache.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.runtime import Segmenter
from edgeseg.runtime.manifest import read_manifest


@pytest.fixture(scope="module")
def batch(bundle_dir) -> np.ndarray:
    size = read_manifest(bundle_dir).spec.size
    rng = np.random.default_rng(0)
    return rng.uniform(-0.5, 1.5, (3, 1, *size)).astype(np.float32)


def _sha16(bundle_dir, precision: str) -> str:
    return read_manifest(bundle_dir).artifact("onnx", precision).sha256[:16]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnxruntime_reuses_its_optimised_graph(precision, bundle_dir, batch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    entry = read_manifest(bundle_dir).artifact("onnx", precision)
    plain = ort.InferenceSession(str(bundle_dir / entry.file), providers=["CPUExecutionProvider"])
    expected = plain.run(None, {plain.get_inputs()[0].name: batch})[0]
    with Segmenter.load(bundle_dir, backend=f"onnxruntime:{precision}") as seg:
        first = seg.infer(batch)
    files = sorted((tmp_path / "cache" / "onnxruntime").iterdir())
    assert [f.name.split("-")[0] for f in files] == [entry.sha256[:16]] and files[0].suffix == ".onnx"
    stamp = files[0].stat().st_mtime_ns
    with Segmenter.load(bundle_dir, backend=f"onnxruntime:{precision}") as seg:
        second = seg.infer(batch)
    assert files[0].stat().st_mtime_ns == stamp  # read, not rewritten
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)


def test_a_damaged_cached_graph_is_dropped_and_the_artifact_loads(bundle_dir, batch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    entry = read_manifest(bundle_dir).artifact("onnx", "fp32")
    plain = ort.InferenceSession(str(bundle_dir / entry.file), providers=["CPUExecutionProvider"])
    expected = plain.run(None, {plain.get_inputs()[0].name: batch})[0]
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as seg:
        seg.infer(batch)
    [cached] = (tmp_path / "cache" / "onnxruntime").iterdir()
    cached.write_bytes(cached.read_bytes()[:100])  # a disk that filled up mid-write
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as seg:
        np.testing.assert_array_equal(seg.infer(batch), expected)
    assert not cached.exists() or cached.stat().st_size > 100


def test_openvino_keeps_one_blob_folder_per_artifact(bundle_dir, batch, tmp_path):
    pytest.importorskip("openvino")
    logits = []
    for _ in range(2):
        with Segmenter.load(bundle_dir, backend="openvino:fp32") as seg:
            logits.append(seg.infer(batch))
    folders = sorted(p.name for p in (tmp_path / "cache" / "openvino").iterdir())
    assert folders == [_sha16(bundle_dir, "fp32")]
    assert any(p.suffix == ".blob" for p in (tmp_path / "cache" / "openvino" / folders[0]).iterdir())
    np.testing.assert_array_equal(logits[0], logits[1])
