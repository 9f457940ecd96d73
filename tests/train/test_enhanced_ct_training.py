"""Training data as Enhanced CT: a tree of case folders, each one multi-frame file and its DICOM SEG.

The oracle is the phantom itself: its label map, written as a SEG on the single-frame series the
phantom writer makes and as a SEG on an Enhanced CT holding the same slices as frames in shuffled
order (``tests/enhanced_ct.py``, pydicom alone). Both trees must give the phantom's HU and labels,
the same slice store, the same content hashes (a case is hashed as read, not by file), the same
evaluation and cross-validation; a resumed run on the Enhanced CT tree sees a changed SEG; a SEG
frame that cannot be placed on the file is refused in one line, not dropped from the label map.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edgeseg.data.open import open_dataset

pytest.importorskip("highdicom")
pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CASES = ("case_000", "case_001", "case_002")
TINY = ["--size", "32", "--base", "4", "--depth", "2", "--batch-size", "8", "--threads", "1", "--amp", "off",
        "--memory-format", "channels-last", "--workers", "0", "--labels", "liver=1,spine=2,kidney=3",
        "--window", "-200,300", "--quiet"]


def run(*args, check: bool = True) -> subprocess.CompletedProcess:
    """``edgeseg ARGS`` in this process (torch is imported here already, where each of this file's
    commands spent seconds importing it in a fresh interpreter); the exit status, stdout
    and stderr are the command's own, and an exception it lets through fails the test."""
    from tests.guarded_cli import GuardedCliRunner

    from edgeseg.cli.main import cli

    result = GuardedCliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    proc = subprocess.CompletedProcess(["edgeseg", *args], result.exit_code, result.stdout, result.stderr)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict:
    """{"sf": single-frame tree, "ect": Enhanced CT tree, "truth": {case: phantom Volume}}."""
    from edgeseg.data import write_phantom_dataset
    from edgeseg.data.dicom import read_dicom_series_with_refs
    from edgeseg.data.phantom import PHANTOM_LABELS, phantom_geometry
    from edgeseg.runtime.writers import write_dicom_seg
    from tests.enhanced_ct import read_slices, write_enhanced_ct

    root = tmp_path_factory.mktemp("trees")
    shape, spacing = phantom_geometry(32, 8)
    write_phantom_dataset(root / "phantom", len(CASES), seed=3, shape=shape, spacing=spacing, image_format="dicom")
    truth = {volume.case_id: volume for volume in open_dataset(root / "phantom")}  # labels from labelsTr/
    names = {value: name for name, value in PHANTOM_LABELS.items()}
    for k, case in enumerate(CASES):
        series = root / "sf" / case
        shutil.copytree(root / "phantom" / case, series)
        slices = read_slices(series)
        write_dicom_seg(truth[case].label, *read_dicom_series_with_refs(series), names, series / "seg.dcm")
        order = [int(i) for i in np.random.default_rng(k).permutation(len(slices))]
        enhanced = write_enhanced_ct(slices, root / "ect" / case / "e.dcm", order)
        write_dicom_seg(truth[case].label, *read_dicom_series_with_refs(enhanced), names, enhanced.parent / "seg.dcm")
    return {"sf": root / "sf", "ect": root / "ect", "truth": truth}


def test_both_trees_read_as_the_phantom_and_hash_alike(trees):
    from edgeseg.data.case_stream import open_case_readers

    hashes = {}
    for name in ("sf", "ect"):
        volumes = [v for reader in open_case_readers(trees[name]) for v in reader.read()]
        assert [v.case_id for v in volumes] == list(CASES)
        for volume in volumes:
            np.testing.assert_array_equal(volume.label, trees["truth"][volume.case_id].label)
            np.testing.assert_array_equal(volume.hu, trees["truth"][volume.case_id].hu)
        hashes[name] = [v.content_sha256() for v in volumes]
    assert all(trees["truth"][c].label.any() for c in CASES)
    assert hashes["sf"] == hashes["ect"]  # a case is its content, whatever files hold it


def test_training_stores_evaluation_and_resume(trees, tmp_path, assert_one_line_error):
    cache = tmp_path / "cache"
    split = ["--val-fraction", "0.34", "--test-fraction", "0", "--cache", cache]
    for name in ("sf", "ect"):
        run("train", "--data", trees[name], "--out", tmp_path / name, "--epochs", "1", *TINY, *split)
    stores = {json.loads((s / "manifest.json").read_text())["sources"][0][1][0][0]: s for s in cache.glob("store-*[!k]")}
    sf, ect = stores["case_000/IM0001.dcm"], stores["case_000/e.dcm"]
    manifests = [json.loads((s / "manifest.json").read_text()) for s in (sf, ect)]
    assert manifests[0]["case_sha256"] == manifests[1]["case_sha256"]
    for n in range(len(CASES)):
        for kind in ("images", "labels"):
            np.testing.assert_array_equal(np.load(sf / f"{n}.{kind}.npy"), np.load(ect / f"{n}.{kind}.npy"))
    assert np.load(ect / "0.labels.npy").max() == 3

    evaluations = {}
    for name in ("sf", "ect"):
        run("evaluate", tmp_path / "ect" / "best.pt", "--data", trees[name], "--split", "all",
            "--labels", "liver=1,spine=2,kidney=3", "--out", tmp_path / f"eval-{name}", "--quiet")
        evaluations[name] = json.loads((tmp_path / f"eval-{name}" / "eval.json").read_text())
    for key in ("cases", "summary", "data_sha256"):
        assert evaluations["sf"][key] == evaluations["ect"][key]

    # a touched file rebuilds the store; the content is the same, so the run goes on
    os.utime(trees["ect"] / "case_001" / "e.dcm")
    run("train", "--data", trees["ect"], "--out", tmp_path / "ect", "--epochs", "2", "--resume", *TINY, *split)
    assert len(json.loads((tmp_path / "ect" / "metrics.json").read_text())["history"]) == 2
    # the same files with case_001's SEG emptied: other labels than the run trained on
    changed = tmp_path / "changed"
    shutil.copytree(trees["ect"], changed)
    seg = pydicom.dcmread(changed / "case_001" / "seg.dcm")
    seg.PixelData = bytes(len(seg.PixelData))
    seg.save_as(changed / "case_001" / "seg.dcm")
    proc = run("train", "--data", changed, "--out", tmp_path / "ect", "--epochs", "3", "--resume", *TINY, *split,
               check=False)
    assert_one_line_error(proc, "1 case(s) of")
    assert "(case_001)" in proc.stderr


def test_cv_and_export_take_an_enhanced_ct_tree(trees, tmp_path):
    tables = {}
    for name in ("sf", "ect"):
        run("cv", "--data", trees[name], "--out", tmp_path / f"cv-{name}", "--folds", "3", "--epochs", "1", *TINY,
            "--cache", tmp_path / "cache")
        tables[name] = json.loads((tmp_path / f"cv-{name}" / "cv.json").read_text())
    for key in ("per_fold", "pooled"):
        assert tables["sf"][key] == tables["ect"][key]
    bundle = tmp_path / "bundle"
    run("export", tmp_path / "cv-ect" / "fold0" / "best.pt", "--out", bundle, "--int8", "--calib", trees["ect"],
        "--calib-slices", "16", "--verify-data", trees["ect"], "--max-batch", "4", "--quiet")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["calibration"]["slices"] == 16
    run("gate", bundle, "--checkpoint", tmp_path / "cv-ect" / "fold0" / "best.pt", "--verify-data", trees["ect"],
        "--quiet")


def _frame_with_most_segment(seg: pydicom.Dataset) -> pydicom.Dataset:
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), -1)
    index = int(np.argmax(pixels.sum(axis=1)))
    return seg.PerFrameFunctionalGroupsSequence[index].DerivationImageSequence[0].SourceImageSequence[0]


@pytest.mark.parametrize("damage, message", [
    ("another file", "is drawn on 1.2.3.4, not on e.dcm"),
    ("no such frame", "references e.dcm frame 40, but that file has frames 1..8"),
    ("no frame number", "references e.dcm without ReferencedFrameNumber"),
    ("every frame on another file", "references none of e.dcm (SOP Instance UID "),
])
def test_a_seg_frame_not_on_the_file_is_refused_not_dropped(trees, tmp_path, damage, message, assert_one_line_error):
    """One frame of case_001's SEG (the one holding most segment pixels) references another image,
    a frame the file does not have, or no frame: read as if on none, its labels would vanish from
    the training data without a word. A SEG all of whose frames lie on another image names the file
    it does not reference."""
    data = tmp_path / "data"
    shutil.copytree(trees["ect"], data)
    seg = pydicom.dcmread(data / "case_001" / "seg.dcm")
    source = _frame_with_most_segment(seg)
    if damage == "another file":
        source.ReferencedSOPInstanceUID = "1.2.3.4"
    elif damage == "every frame on another file":
        for item in seg.PerFrameFunctionalGroupsSequence:
            item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
    elif damage == "no such frame":
        source.ReferencedFrameNumber = 40
    else:
        del source.ReferencedFrameNumber
    seg.save_as(data / "case_001" / "seg.dcm")
    proc = run("train", "--data", data, "--out", tmp_path / "run", "--epochs", "1", *TINY, "--cache", tmp_path / "c",
               check=False)
    assert_one_line_error(proc, message)
    assert "case_001/seg.dcm " in proc.stderr
    assert not (tmp_path / "run").exists()
