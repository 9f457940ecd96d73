"""The compiled-model cache is used only where no other local user could have written it.

An entry's record (``entry.sha256``) proves that the entry is whole, not who made it: another
user who can write the cache folder can build an entry for a public bundle, swap its model for
their own and write a matching record. These tests plant exactly that (a graph whose logits say
class 1 everywhere) and check that the runtime's logits stay those of the bundle's own file run
outside any cache (the oracle), and that nothing is written into such a folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from edgeseg.runtime import Segmenter
from edgeseg.runtime.manifest import read_manifest

OTHER_UID = 54321  # a user id no test process runs as


@pytest.fixture(scope="module")
def batch(bundle_dir) -> np.ndarray:
    size = read_manifest(bundle_dir).spec.size
    return np.random.default_rng(0).uniform(-0.5, 1.5, (2, 1, *size)).astype(np.float32)


def _plain_logits(model: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return plain.run(None, {plain.get_inputs()[0].name: batch})[0]


def _load(bundle_dir: Path, batch: np.ndarray) -> np.ndarray:
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as seg:
        return seg.infer(batch)


def _plant(entry: Path) -> None:
    """Replace the entry's graph with one whose logits are 10 for class 1 and 0 elsewhere, and
    write the record that matches it, as another user would."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    real = onnx.load(str(entry / "model.onnx"))
    inp, out = real.graph.input[0], real.graph.output[0]
    classes = out.type.tensor_type.shape.dim[1].dim_value
    nodes = [helper.make_node("Mul", [inp.name, "zero"], ["zeros"]),
             *[helper.make_node("Add", ["zeros", f"c{i}"], [f"ch{i}"]) for i in range(classes)],
             helper.make_node("Concat", [f"ch{i}" for i in range(classes)], [out.name], axis=1)]
    inits = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             *[helper.make_tensor(f"c{i}", TensorProto.FLOAT, [], [10.0 * (i == 1)]) for i in range(classes)]]
    model = helper.make_model(helper.make_graph(nodes, "planted", [inp], [out], inits), opset_imports=real.opset_import)
    model.ir_version = real.ir_version
    onnx.save(model, str(entry / "model.onnx"))
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_size} {p.name}\n"
             for p in sorted(entry.iterdir()) if p.name != "entry.sha256"]
    (entry / "entry.sha256").write_text("".join(lines))


def _planted_cache(bundle_dir: Path, batch: np.ndarray, root: Path) -> Path:
    """An onnxruntime entry for the bundle under ``root``, its graph swapped (see _plant)."""
    _load(bundle_dir, batch)
    [entry] = (root / "onnxruntime").iterdir()
    _plant(entry)
    return entry


def test_an_entry_in_a_folder_other_users_can_write_is_not_loaded(bundle_dir, batch, tmp_path):
    pytest.importorskip("onnxruntime")
    expected = _plain_logits(bundle_dir / read_manifest(bundle_dir).artifact("onnx", "fp32").file, batch)
    entry = _planted_cache(bundle_dir, batch, tmp_path / "cache")
    os.chmod(entry.parent, 0o777)
    planted = {p.name: p.read_bytes() for p in entry.iterdir()}
    np.testing.assert_allclose(_load(bundle_dir, batch), expected, rtol=0, atol=1e-5)
    # the folder is left as it was: neither rebuilt into nor cleaned by this user
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]
    assert {p.name: p.read_bytes() for p in entry.iterdir()} == planted


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving files to another user needs root")
def test_a_cache_another_user_owns_is_not_loaded(bundle_dir, batch, tmp_path):
    """EDGESEG_CACHE_DIR naming a folder another user made (mode 0755: only they can write)."""
    pytest.importorskip("onnxruntime")
    expected = _plain_logits(bundle_dir / read_manifest(bundle_dir).artifact("onnx", "fp32").file, batch)
    entry = _planted_cache(bundle_dir, batch, tmp_path / "cache")
    for path in [tmp_path / "cache", *(tmp_path / "cache").rglob("*")]:
        os.lchown(path, OTHER_UID, OTHER_UID)
    np.testing.assert_allclose(_load(bundle_dir, batch), expected, rtol=0, atol=1e-5)
    assert {p.stat().st_uid for p in (tmp_path / "cache").rglob("*")} == {OTHER_UID}
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]


def test_entries_are_private_and_reused_under_a_group_writable_umask(bundle_dir, batch, tmp_path):
    """A umask of 002 (common where each user has a group of their own) must neither leave the
    cache writable by the group nor make the runtime distrust its own entries."""
    pytest.importorskip("onnxruntime")
    old = os.umask(0o002)
    try:
        first = _load(bundle_dir, batch)
        root = tmp_path / "cache"
        [entry] = (root / "onnxruntime").iterdir()
        modes = {p.relative_to(root): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}
        stamps = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
        second = _load(bundle_dir, batch)
    finally:
        os.umask(old)
    assert all(mode & 0o022 == 0 for mode in modes.values()), modes
    assert {modes[Path(".")], modes[Path("onnxruntime")], modes[entry.relative_to(root)]} == {0o700}
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == stamps  # read, not rebuilt
    np.testing.assert_array_equal(second, first)
