"""The engines' compiled-model caches: a second load uses them, a damaged entry is rebuilt.

ONNX Runtime keeps its optimised graph and OpenVINO its compiled blob in entries under
``$EDGESEG_CACHE_DIR`` (a fresh folder per test, see conftest), named by the artifact's sha256
and the engine's key (version, settings), each with a record of its files' sha256. The oracle
for the logits is a plain session on the bundle's file, outside any cache.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from edgeseg.runtime import Segmenter
from edgeseg.runtime.compiled_cache import CompiledModelCache
from edgeseg.runtime.manifest import read_manifest


@pytest.fixture(scope="module")
def batch(bundle_dir) -> np.ndarray:
    size = read_manifest(bundle_dir).spec.size
    rng = np.random.default_rng(0)
    return rng.uniform(-0.5, 1.5, (3, 1, *size)).astype(np.float32)


def _plain_logits(engine: str, model: Path, batch: np.ndarray) -> np.ndarray:
    """The oracle: the artifact run by the engine itself, no cache folder anywhere."""
    if engine == "onnxruntime":
        import onnxruntime as ort

        plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return plain.run(None, {plain.get_inputs()[0].name: batch})[0]
    import openvino as ov

    compiled = ov.Core().compile_model(str(model), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    return compiled.create_infer_request().infer({0: batch})[0].copy()


def _expected_entry(engine: str, sha256: str, artifact: Path) -> str:
    """The entry's folder name, spelled out here rather than taken from the code under test."""
    if engine == "onnxruntime":
        import onnxruntime as ort

        flags = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")),
                     platform.machine())
        key = f"onnxruntime {ort.__version__} {flags}"
    else:
        import openvino as ov

        key = f"openvino {ov.get_version()} CPU LATENCY f32 threads 0 {os.path.realpath(artifact)}"
    return f"{sha256[:16]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _record(entry: Path) -> dict[str, tuple[str, int]]:
    lines = (entry / "entry.sha256").read_text().splitlines()
    return {name: (digest, int(size)) for digest, size, name in (line.split(" ", 2) for line in lines)}


def _engine_files(entry: Path) -> list[Path]:
    return sorted(p for p in entry.iterdir() if p.name != "entry.sha256")


def _load(bundle_dir: Path, engine: str, precision: str, batch: np.ndarray) -> np.ndarray:
    with Segmenter.load(bundle_dir, backend=f"{engine}:{precision}") as seg:
        return seg.infer(batch)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_second_load_reads_the_verified_entry(engine, precision, bundle_dir, batch, tmp_path):
    pytest.importorskip(engine)
    entry = read_manifest(bundle_dir).artifact("onnx", precision)
    expected = _plain_logits(engine, bundle_dir / entry.file, batch)
    first = _load(bundle_dir, engine, precision, batch)
    [folder] = (tmp_path / "cache" / engine).iterdir()  # no partial or stale folders left behind
    assert folder.name == _expected_entry(engine, entry.sha256, bundle_dir / entry.file)
    files = _engine_files(folder)
    assert files and {p.name for p in files} == set(_record(folder))
    for p in files:
        assert _record(folder)[p.name] == (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
    stamps = [p.stat().st_mtime_ns for p in files]
    second = _load(bundle_dir, engine, precision, batch)
    assert [p.stat().st_mtime_ns for p in _engine_files(folder)] == stamps  # read, not rewritten
    np.testing.assert_allclose(first, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(second, first)


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A  # same size, different bytes: only a hash notices
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped byte": lambda entry: _flip_middle(_engine_files(entry)[0]),
    "truncated": lambda entry: _engine_files(entry)[0].write_bytes(_engine_files(entry)[0].read_bytes()[:100]),
    "no record": lambda entry: (entry / "entry.sha256").unlink(),
    "unrecorded file": lambda entry: (entry / "extra.blob").write_bytes(b"\0" * 64),
    "garbled record": lambda entry: (entry / "entry.sha256").write_text("not a record\n"),
}


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_entry_is_rebuilt_never_trusted(engine, damage, bundle_dir, batch, tmp_path):
    pytest.importorskip(engine)
    entry = read_manifest(bundle_dir).artifact("onnx", "fp32")
    expected = _plain_logits(engine, bundle_dir / entry.file, batch)
    _load(bundle_dir, engine, "fp32", batch)
    [folder] = (tmp_path / "cache" / engine).iterdir()
    good = {p.name for p in _engine_files(folder)}
    DAMAGE[damage](folder)
    np.testing.assert_allclose(_load(bundle_dir, engine, "fp32", batch), expected, rtol=0, atol=1e-5)
    assert [p.name for p in (tmp_path / "cache" / engine).iterdir()] == [folder.name]
    rebuilt = {p.name: p.read_bytes() for p in _engine_files(folder)}
    assert set(rebuilt) == good == set(_record(folder))
    for name, data in rebuilt.items():
        assert _record(folder)[name] == (hashlib.sha256(data).hexdigest(), len(data))


def test_an_unwritable_cache_still_loads(bundle_dir, batch, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache root cannot be a folder here\n")
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(blocker))
    entry = read_manifest(bundle_dir).artifact("onnx", "fp32")
    expected = _plain_logits("onnxruntime", bundle_dir / entry.file, batch)
    np.testing.assert_allclose(_load(bundle_dir, "onnxruntime", "fp32", batch), expected, rtol=0, atol=1e-5)
    assert blocker.read_text().startswith("the cache root")


def test_two_copies_of_a_bundle_keep_an_openvino_entry_each(bundle_dir, batch, tmp_path):
    """OpenVINO names its blob after the model's path: each copy has its own entry, and using
    one copy after the other rebuilds neither."""
    pytest.importorskip("openvino")
    copies = [shutil.copytree(bundle_dir, tmp_path / name) for name in ("a", "b")]
    results = [_load(copy, "openvino", "fp32", batch) for copy in copies]
    root = tmp_path / "cache" / "openvino"
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert len(list(root.iterdir())) == 2
    results += [_load(copy, "openvino", "fp32", batch) for copy in copies]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    for logits in results[1:]:
        np.testing.assert_array_equal(logits, results[0])


def plant_leftovers(folder: Path) -> dict[str, bool]:
    """What killed processes leave in an engine folder, each with whether a cache miss should
    remove it: leftovers an hour old go; a fresh one (a build in progress elsewhere), an old entry
    and an old leftover-named file stay."""
    hours_ago = time.time() - 2 * 3600
    plan = {".partial-aaaa-1-0f": True, ".stale-bbbb-0e": True, "cccc.stale-7-00ff": True,
            ".partial-dddd-2-1e": False, "eeee-ffff": False, ".partial-file": False}
    for name, old in plan.items():
        path = folder / name
        if name == ".partial-file":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not a folder")
        else:
            path.mkdir(parents=True)
            (path / "blob").write_bytes(b"\0" * 64)
        if old or name in {"eeee-ffff", ".partial-file"}:
            os.utime(path, (hours_ago, hours_ago))
    return plan


def test_a_miss_removes_the_hour_old_leftovers_of_killed_processes(tmp_path):
    """A process killed while it built an entry (or deleted a stale one) left its private folder;
    nothing removed it before."""
    folder = tmp_path / "cache" / "onnxruntime"
    plan = plant_leftovers(folder)
    cache = CompiledModelCache("onnxruntime", "ab" * 32, "engine 1.0", root=tmp_path / "cache")

    def build(into: Path | None, hit: bool) -> str:
        (into / "model.bin").write_bytes(b"compiled")
        return "built"

    assert cache.load(build) == "built"
    left = {p.name for p in folder.iterdir()}
    assert left == {name for name, goes in plan.items() if not goes} | {cache.path.name}
    assert (folder / ".partial-dddd-2-1e" / "blob").exists()


def test_a_bundle_under_a_folder_name_that_is_not_utf8_loads_and_caches(bundle_dir, batch, tmp_path, caplog):
    """Linux folder names are bytes: one that is not UTF-8 (b"\\xff") reaches Python as a
    surrogate escape. The OpenVINO entry is named after the path's bytes, as libedgeseg names it
    (it hashes realpath's bytes), instead of failing to encode the path (OpenVINO before 2026.1:
    "surrogates not allowed")."""
    pytest.importorskip("openvino")
    import logging

    import openvino as ov

    # The log lines name the path; pytest-xdist cannot send a report holding its surrogate, and an
    # earlier test in the same worker may have turned edgeseg's logs on at INFO.
    caplog.set_level(logging.CRITICAL, logger="edgeseg")

    copy = shutil.copytree(bundle_dir, tmp_path / os.fsdecode(b"scanner-\xff") / "bundle")
    entry = read_manifest(copy).artifact("onnx", "fp32")
    logits = _load(copy, "openvino", "fp32", batch)
    np.testing.assert_allclose(logits, _plain_logits("openvino", bundle_dir / entry.file, batch), rtol=0, atol=1e-5)
    key = b"openvino %s CPU LATENCY f32 threads 0 %s" % (ov.get_version().encode(),
                                                         os.path.realpath(os.fsencode(copy / entry.file)))
    [folder] = (tmp_path / "cache" / "openvino").iterdir()
    assert folder.name == f"{entry.sha256[:16]}-{hashlib.sha256(key).hexdigest()[:12]}"
    # The blob is in the entry, and a second load reads it instead of rebuilding it. OpenVINO 2026.1
    # and later are given the path (its blob named as OpenVINO names the path's: a cache hit skips
    # reading the graph); older releases cannot encode it and are given the graph from memory.
    assert _engine_files(folder)
    plain = ov.Core()
    plain.set_property({"CACHE_DIR": str(tmp_path / "plain")})
    blobs = {p.name for p in folder.rglob("*.blob")}
    try:
        plain.compile_model(str(copy / entry.file), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                             "INFERENCE_PRECISION_HINT": "f32"})
        expected = {p.name for p in (tmp_path / "plain").glob("*.blob")}
    except UnicodeEncodeError:  # before 2026.1: the graph from memory, a blob of its own
        expected = blobs
    assert blobs and blobs == expected
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    np.testing.assert_array_equal(_load(copy, "openvino", "fp32", batch), logits)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps
