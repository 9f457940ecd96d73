"""libedgeseg's compiled-model cache: the Python runtime's entry layout, shared, verified, rebuilt.

``es_open`` keeps OpenVINO's blob in ``$EDGESEG_CACHE_DIR/openvino/SHA16-KEY12/`` with a record
of its files' sha256 (edgeseg/runtime/compiled_cache.py). The oracle for the masks is the
Python Segmenter on OpenVINO with a cache folder of its own that the C program never sees.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from edgeseg.runtime import Segmenter
from edgeseg.runtime.manifest import read_manifest
from tests.runtime.test_compiled_cache import plant_leftovers


@pytest.fixture(scope="module")
def expected(bundle, phantom_hu, tmp_path_factory) -> np.ndarray:
    os.environ["EDGESEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("oracle-cache"))
    try:
        with Segmenter.load(bundle, backend="openvino:fp32") as seg:
            return seg.predict_volume(phantom_hu)
    finally:
        del os.environ["EDGESEG_CACHE_DIR"]


def _entry_name(bundle) -> str:
    import openvino as ov

    entry = read_manifest(bundle).artifact("onnx", "fp32")
    sha = entry.sha256
    key = f"openvino {ov.get_version()} CPU LATENCY f32 threads 0 {os.path.realpath(bundle / entry.file)}"
    return f"{sha[:16]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _record_matches(folder) -> bool:
    files = _files(folder)
    lines = files.pop("entry.sha256").decode().splitlines()
    recorded = {name: (digest, int(size)) for digest, size, name in (line.split(" ", 2) for line in lines)}
    return bool(files) and recorded == {n: (hashlib.sha256(d).hexdigest(), len(d)) for n, d in files.items()}


def test_c_builds_then_reuses_a_verified_entry(bundle, phantom_hu, expected, programs, run_raw, tmp_path):
    first = run_raw(programs["c"], bundle, "fp32", phantom_hu, tmp_path)
    [folder] = (tmp_path / "cache" / "openvino").iterdir()
    assert folder.name == _entry_name(bundle) and _record_matches(folder)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    second = run_raw(programs["c"], bundle, "fp32", phantom_hu, tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before  # read, not rebuilt
    assert int(np.count_nonzero(first != expected)) == 0
    assert int(np.count_nonzero(second != expected)) == 0


def test_c_uses_the_entry_python_built(bundle, phantom_hu, expected, programs, run_raw, tmp_path):
    with Segmenter.load(bundle, backend="openvino:fp32") as seg:
        seg.predict(phantom_hu[0])
    [folder] = (tmp_path / "cache" / "openvino").iterdir()
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    got = run_raw(programs["c"], bundle, "fp32", phantom_hu, tmp_path)
    assert [p.name for p in (tmp_path / "cache" / "openvino").iterdir()] == [folder.name]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert int(np.count_nonzero(got != expected)) == 0


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "unrecorded file", "no record"])
def test_c_rebuilds_a_damaged_entry(damage, bundle, phantom_hu, expected, programs, run_raw, tmp_path):
    run_raw(programs["c"], bundle, "fp32", phantom_hu, tmp_path)
    [folder] = (tmp_path / "cache" / "openvino").iterdir()
    blob = next(p for p in folder.iterdir() if p.name != "entry.sha256")
    data = bytearray(blob.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0x5A
        blob.write_bytes(bytes(data))
    elif damage == "truncated":
        blob.write_bytes(bytes(data[:100]))
    elif damage == "unrecorded file":
        (folder / "extra.blob").write_bytes(b"\0" * 64)
    else:
        (folder / "entry.sha256").unlink()
    got = run_raw(programs["c"], bundle, "fp32", phantom_hu, tmp_path)
    assert int(np.count_nonzero(got != expected)) == 0
    assert [p.name for p in (tmp_path / "cache" / "openvino").iterdir()] == [folder.name]
    assert _record_matches(folder) and "extra.blob" not in _files(folder)


def test_c_removes_the_hour_old_leftovers_of_killed_processes(bundle, phantom_hu, expected, programs, run_raw,
                                                              tmp_path):
    folder = tmp_path / "cache" / "openvino"
    plan = plant_leftovers(folder)
    got = run_raw(programs["c"], bundle, "fp32", phantom_hu, tmp_path)
    assert int(np.count_nonzero(got != expected)) == 0
    left = {p.name for p in folder.iterdir()}
    assert left == {name for name, goes in plan.items() if not goes} | {_entry_name(bundle)}


def test_c_neither_uses_nor_writes_a_cache_folder_other_users_can_write(bundle, phantom_hu, expected, programs,
                                                                        run_raw, tmp_path):
    """Another user could plant a blob with a matching record there (the record proves an entry
    whole, not who made it): the model is compiled without the cache."""
    folder = tmp_path / "cache" / "openvino"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)
    got = run_raw(programs["c"], bundle, "fp32", phantom_hu, tmp_path)
    assert int(np.count_nonzero(got != expected)) == 0
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_c_rebuilds_an_entry_another_user_owns(bundle, phantom_hu, expected, programs, run_raw, tmp_path):
    run_raw(programs["c"], bundle, "fp32", phantom_hu, tmp_path)
    [folder] = (tmp_path / "cache" / "openvino").iterdir()
    for path in [folder, *folder.iterdir()]:
        os.lchown(path, 54321, 54321)
    got = run_raw(programs["c"], bundle, "fp32", phantom_hu, tmp_path)
    assert int(np.count_nonzero(got != expected)) == 0
    assert [p.name for p in (tmp_path / "cache" / "openvino").iterdir()] == [folder.name]
    assert {p.stat().st_uid for p in [folder, *folder.iterdir()]} == {os.geteuid()} and _record_matches(folder)
