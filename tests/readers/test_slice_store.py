"""The slice store: built once and reused, rebuilt when the spec, a source file or the version
changes, never trusted after a killed build, safe with two builders, refusing an unwritable cache."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeseg.data import open_dataset
from edgeseg.data.phantom import write_phantom_dataset
from edgeseg.data.slice_set import map_labels
from edgeseg.data.store import StoreCases, open_slice_store
from edgeseg.errors import DataError
from edgeseg.kernels import reference
from edgeseg.spec import PreprocessSpec

SPEC = PreprocessSpec(window=(-200.0, 300.0), size=(32, 32))
LABELS = {"liver": [1]}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_phantom_dataset(tmp_path / "nifti", cases=3, seed=4, shape=(12, 48, 48))


def _expected(source: Path, spec: PreprocessSpec):
    """Images and labels of every case from the numpy reference, case by case."""
    images, labels = [], []
    for volume in open_dataset(source):
        images.append(reference.preprocess(volume.hu, spec))
        labels.append(reference.resize_labels(map_labels(volume.label, LABELS), spec.size))
    return np.concatenate(images), np.concatenate(labels)


def test_store_holds_the_reference_slices_and_index(dataset, tmp_path):
    store = open_slice_store(str(dataset), tmp_path / "cache", SPEC, LABELS)
    assert store.built and store.case_ids == ["case_000", "case_001", "case_002"] and len(store) == 36
    images, labels = store.take(np.arange(len(store)))
    want_images, want_labels = _expected(dataset, SPEC)
    np.testing.assert_allclose(images, want_images.reshape(images.shape), atol=1e-5)
    np.testing.assert_array_equal(labels, want_labels)
    # The index says which classes each slice holds, checked by brute force on the labels.
    for row in range(len(store)):
        assert store.present[row, 1] == (labels[row] == 1).any()
        assert store.slice_index[row] == row % 12 and store.case_index[row] == row // 12
    assert (~store.present[:, 1]).any(), "the phantom has liver-free slices at the top and bottom"
    val = StoreCases(store, ["case_002", "case_000"])
    np.testing.assert_array_equal(val.labels, np.concatenate([want_labels[24:], want_labels[:12]]))
    np.testing.assert_allclose(val.images[10:14], want_images[[34, 35, 0, 1]].reshape(4, 1, 32, 32), atol=1e-5)


def test_second_open_reuses_the_store_without_reading_sources(dataset, tmp_path):
    first = open_slice_store(str(dataset), tmp_path / "cache", SPEC, LABELS)
    before = first.take(np.arange(len(first)))
    # Overwrite a source with garbage of the same size and modification time: a store that
    # re-read its sources would fail to decode it; one that trusts its key reads the old slices.
    image = dataset / "imagesTr" / "case_001.nii.gz"
    info = image.stat()
    image.write_bytes(b"\0" * info.st_size)
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns))
    second = open_slice_store(str(dataset), tmp_path / "cache", SPEC, LABELS)
    assert not second.built and second.path == first.path
    for got, want in zip(second.take(np.arange(len(second))), before):
        np.testing.assert_array_equal(got, want)


def _rss_file_kib() -> int:
    """File-backed resident memory of this process (/proc/self/status RssFile), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("this kernel does not report RssFile")


def test_reading_the_whole_store_does_not_grow_resident_memory(tmp_path):
    # 24 cases of 16 slices at 128 x 128: 24 MiB of images, read once through in shuffled
    # batches as an epoch does. Through memory maps every page read would stay resident.
    spec = PreprocessSpec(window=(-200.0, 300.0), size=(128, 128))
    store = open_slice_store("phantom:cases=24,seed=3,size=64,slices=16", tmp_path / "cache", spec, LABELS)
    images_bytes = sum(p.stat().st_size for p in store.path.glob("*.images.npy"))
    assert images_bytes > 24 * 2**20
    order = np.random.default_rng(0).permutation(len(store))
    store.take(order[:8])  # first use: headers read, code paths warm
    before = _rss_file_kib()
    total = 0
    for start in range(0, len(order), 8):
        images, labels = store.take(np.sort(order[start:start + 8]))
        total += images.nbytes
    assert total >= images_bytes - 8 * images[0].nbytes
    assert (_rss_file_kib() - before) * 1024 < images_bytes / 8


def test_truncated_store_file_is_a_data_error(dataset, tmp_path):
    store = open_slice_store(str(dataset), tmp_path / "cache", SPEC, LABELS)
    path = store.path / "1.images.npy"
    os.truncate(path, path.stat().st_size - 100)
    store.take(np.array([12]))  # the first slice of case 1 is whole
    with pytest.raises(DataError, match="truncated"):
        store.take(np.array([23]))


def test_changing_the_spec_builds_another_store(dataset, tmp_path):
    first = open_slice_store(str(dataset), tmp_path / "cache", SPEC, LABELS)
    other = PreprocessSpec(window=(-100.0, 200.0), size=(16, 16))
    second = open_slice_store(str(dataset), tmp_path / "cache", other, LABELS)
    assert second.built and second.path != first.path
    images, _ = second.take(np.arange(len(second)))
    np.testing.assert_allclose(images, _expected(dataset, other)[0].reshape(images.shape), atol=1e-5)


def test_changed_source_file_rebuilds_and_says_why(dataset, tmp_path, caplog):
    first = open_slice_store(str(dataset), tmp_path / "cache", SPEC, LABELS)
    write_phantom_dataset(dataset, cases=3, seed=5, shape=(12, 48, 48))  # new data, same names
    with caplog.at_level(logging.INFO, logger="edgeseg.data.store"):
        second = open_slice_store(str(dataset), tmp_path / "cache", SPEC, LABELS)
    assert second.built and second.path == first.path
    # said by the line the caller logs once the data has passed its checks, not while opening
    assert "(rebuilt: source files changed" in second.describe()
    assert not caplog.text
    images, _ = second.take(np.arange(len(second)))
    np.testing.assert_allclose(images, _expected(dataset, SPEC)[0].reshape(images.shape), atol=1e-5)


def test_store_of_another_version_is_rebuilt_and_says_why(dataset, tmp_path):
    first = open_slice_store(str(dataset), tmp_path / "cache", SPEC, LABELS)
    manifest = json.loads((first.path / "manifest.json").read_text())
    manifest.update(format=0, edgeseg="0.0.1")
    (first.path / "manifest.json").write_text(json.dumps(manifest))
    second = open_slice_store(str(dataset), tmp_path / "cache", SPEC, LABELS)
    assert second.built
    assert "built by store format 0 of edgeseg 0.0.1" in second.describe()
    assert json.loads((second.path / "manifest.json").read_text())["format"] != 0


def test_store_built_under_the_earlier_reader_rules_is_rebuilt(dataset, tmp_path):
    first = open_slice_store(str(dataset), tmp_path / "cache", SPEC, LABELS)
    manifest = json.loads((first.path / "manifest.json").read_text())
    manifest.update(format=2)  # same edgeseg version string, as in a development install
    (first.path / "manifest.json").write_text(json.dumps(manifest))
    assert open_slice_store(str(dataset), tmp_path / "cache", SPEC, LABELS).built


BUILD = """
import sys
from edgeseg.data.store import open_slice_store
from edgeseg.spec import PreprocessSpec
store = open_slice_store(sys.argv[1], sys.argv[2], PreprocessSpec(window=(-200.0, 300.0), size=(32, 32)), {"liver": [1]})
print(int(store.built), store.path)
"""


def _builder(source: str, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", BUILD, source, str(cache)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_build_leaves_no_store_a_later_run_trusts(tmp_path):
    # Many phantom cases, so the build is still running when the first case lands on disk.
    source, cache = "phantom:cases=120,seed=2,size=48,slices=12", tmp_path / "cache"
    proc = _builder(source, cache)
    deadline = time.monotonic() + 120
    while not list(cache.glob(".store-*.staging-*/0.images.npy")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr and proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p for p in cache.iterdir() if p.name.startswith("store-") and p.is_dir()] == []
    store = open_slice_store(source, cache, SPEC, LABELS)
    assert store.built and len(store) == 120 * 12
    assert not list(cache.glob(".store-*.staging-*")), "the killed build's staging folder is removed"


def test_two_processes_building_at_once_build_it_once(tmp_path):
    source, cache = "phantom:cases=6,seed=2,size=48,slices=12", tmp_path / "cache"
    procs = [_builder(source, cache) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    built = sorted(out.split()[0] for out, _ in outputs)
    assert built == ["0", "1"], outputs  # one built, the other waited and reused it
    assert len({out.split()[1] for out, _ in outputs}) == 1


def test_cache_that_is_not_a_writable_folder_is_refused_before_reading(dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="slice store cache"):
        open_slice_store(str(dataset), blocker, SPEC, LABELS)
    with pytest.raises(DataError, match="slice store cache"):
        open_slice_store(str(dataset), blocker / "below", SPEC, LABELS)


def test_train_cli_refuses_an_unwritable_cache_in_one_line(tmp_path, assert_one_line_error):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "train", "--data", "phantom:cases=3,size=32,slices=4",
                           "--out", str(tmp_path / "run"), "--cache", str(blocker / "cache"), "--epochs", "1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(proc, "slice store cache")
    assert not (tmp_path / "run").exists()


def test_generated_phantom_source_is_reused_too(tmp_path):
    source = "phantom:cases=2,seed=3,size=32,slices=4"
    assert open_slice_store(source, tmp_path / "cache", SPEC, LABELS).built
    assert not open_slice_store(source, tmp_path / "cache", SPEC, LABELS).built


@pytest.mark.parametrize("name", ["msd_liver_slices", "dcmqi_ct_liver", "totalseg_example_ct", "phantom"])
def test_case_groups_read_what_open_dataset_reads(name, tmp_path):
    from edgeseg.data.store_sources import case_groups

    source = "phantom:cases=3,size=32,slices=4" if name == "phantom" else str(ROOT / "tests" / "data" / name)
    if name == "totalseg_example_ct":  # a NIfTI dataset: one group per image/label pair
        source = str(tmp_path / "nifti")
        (tmp_path / "nifti" / "imagesTr").mkdir(parents=True)
        (tmp_path / "nifti" / "labelsTr").mkdir()
        data = ROOT / "tests" / "data" / name
        (tmp_path / "nifti" / "imagesTr" / "ct.nii.gz").write_bytes((data / "example_ct_sm.nii.gz").read_bytes())
        (tmp_path / "nifti" / "labelsTr" / "ct.nii.gz").write_bytes((data / "example_seg.nii.gz").read_bytes())
    groups = case_groups(source)
    grouped = [volume for group in groups for volume in group.read()]
    whole = open_dataset(source)
    assert [v.case_id for v in grouped] == [v.case_id for v in whole]
    for a, b in zip(grouped, whole):
        np.testing.assert_array_equal(a.hu, b.hu)
        np.testing.assert_array_equal(a.label, b.label)
    if name in ("phantom", "totalseg_example_ct"):
        assert len(groups) == len(whole), "one group per case"
