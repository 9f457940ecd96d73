"""Images of a series that arrive after its SEG was made, or while it is being made, against
dcmtk's storescu: a late image the node refuses leaves the kept series as it was, and images
received while the series is segmented are segmented again with it, into a SEG that replaces the
first one even when the work folder lost one of its images meanwhile."""

from __future__ import annotations

import contextlib
import threading

import pytest

from edgeseg.serve.dicom_series import HeldSeries, absorb
from tests.serve.test_dicom_node import DCMTK, SERIES, _storescu, _wait_for
from tests.serve.test_dicom_node_slow_series import _referenced, _running

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
dcmtk = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")


def _sop(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@contextlib.contextmanager
def model_held(node):
    """The model of ``node`` held (each series waits in it) until the block ends; yields the
    Event set once a series has entered it."""
    entered, release = threading.Event(), threading.Event()
    predict = node.segmenter.predict_volume

    def held_predict(volume):
        entered.set()
        release.wait(120)
        return predict(volume)

    node.segmenter.predict_volume = held_predict
    try:
        yield entered
    finally:
        release.set()


def _replaces_first(out, series_uid: str) -> set[str]:
    """The SOP instances the second SEG references, after checking that it replaces the first."""
    first, second = (pydicom.dcmread(out / name) for name in (f"{series_uid}.seg.dcm", f"{series_uid}-2.seg.dcm"))
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    assert (int(first.InstanceNumber), int(second.InstanceNumber)) == (1, 2)
    return _referenced(out / f"{series_uid}-2.seg.dcm")


@dcmtk
def test_a_refused_late_image_leaves_the_kept_series_to_the_next_one(serve_bundle, tmp_path, free_port, wait_port,
                                                                   monkeypatch):
    """The first late image is past the volume limit with the images kept, and refused; the
    next, which fits, is segmented with the kept images into a SEG that replaces the first. (The
    refusal used to remove the images kept: the next late image made a SEG of its own.)"""
    files = sorted(SERIES.glob("*.dcm"))
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    uid, slice_bytes = head.SeriesInstanceUID, int(head.Rows) * int(head.Columns) * 4  # float32 HU
    with _running(serve_bundle, tmp_path, free_port, wait_port) as node:
        assert _storescu(node.port, files[:2]).returncode == 0
        assert _wait_for(lambda: (tmp_path / "work" / f"{uid}.segmented").is_dir(), 60), node.stats  # kept
        monkeypatch.setenv("EDGESEG_MAX_VOLUME_BYTES", str(2 * slice_bytes))  # the kept series is full
        refused = _storescu(node.port, files[2:])
        assert node.stats.refused == 1, refused.stderr
        assert (tmp_path / "work" / f"{uid}.segmented").is_dir()  # kept again
        monkeypatch.setenv("EDGESEG_MAX_VOLUME_BYTES", str(3 * slice_bytes))
        assert _storescu(node.port, files[2:]).returncode == 0
        assert _wait_for(lambda: len(node.stats.segmented) == 2, 60), node.stats
    assert _replaces_first(tmp_path / "out", uid) == {_sop(f) for f in files}


@dcmtk
def test_an_image_refused_for_a_new_series_gives_up_no_kept_series(serve_bundle, tmp_path, free_port, wait_port):
    """With --max-series 1 a new series takes the room of the series kept, but only once its
    first image is stored: one the disk refuses takes no room, and a late image of the kept
    series still joins it. (The kept series used to be given up before the image was stored.)"""
    files = sorted(SERIES.glob("*.dcm"))
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    other = pydicom.dcmread(files[0])
    other.SeriesInstanceUID, other.SOPInstanceUID = uid + ".2", other.SOPInstanceUID + ".2"
    other.save_as(tmp_path / "other.dcm")
    with _running(serve_bundle, tmp_path, free_port, wait_port, max_series=1) as node:
        assert _storescu(node.port, files).returncode == 0
        assert _wait_for(lambda: (tmp_path / "work" / f"{uid}.segmented").is_dir(), 60), node.stats
        (tmp_path / "work" / f"{uid}.2").write_text("a file where the new series' folder goes: the disk refuses it")
        refused = _storescu(node.port, [tmp_path / "other.dcm"])
        assert node.stats.refused == 1, refused.stderr
        assert _storescu(node.port, files[2:]).returncode == 0  # a late image of the kept series
        assert _wait_for(lambda: len(node.stats.segmented) == 2, 60), node.stats
    assert _replaces_first(tmp_path / "out", uid) == {_sop(f) for f in files}


@dcmtk
@pytest.mark.parametrize("lost", [False, True], ids=["whole", "one-image-lost"])
def test_images_received_while_the_series_is_segmented_are_segmented_with_it(serve_bundle, tmp_path, free_port,
                                                                             wait_port, lost):
    """The second part of a series arrives while the first is being segmented (the model is held
    until it is stored): the images of the first part are moved to it and the second SEG, of the
    whole series, replaces the first. ``lost``: one image of the first part is gone from the work
    folder before it is moved; the SEG of the others still replaces the first (it used to go out
    as a SEG series of its own)."""
    files = sorted(SERIES.glob("*.dcm"))
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    with _running(serve_bundle, tmp_path, free_port, wait_port) as node:
        with model_held(node) as entered:
            assert _storescu(node.port, files[:2]).returncode == 0
            assert entered.wait(60), node.stats  # the first part is being segmented
            assert _storescu(node.port, files[2:]).returncode == 0  # the second part, held apart
            if lost:
                [taken] = (tmp_path / "work").glob(f"{uid}.taken-*")
                (taken / f"{_sop(files[1])}.dcm").unlink()
        assert _wait_for(lambda: len(node.stats.segmented) == 2, 60), node.stats
    expected = {_sop(f) for f in files} - ({_sop(files[1])} if lost else set())
    assert _replaces_first(tmp_path / "out", uid) == expected


def test_absorb_counts_the_images_it_moved_when_one_cannot_be_moved(tmp_path, monkeypatch):
    """The counts of the part received follow the files it holds: an image of the earlier part
    that cannot be moved is neither held nor counted."""
    monkeypatch.delenv("EDGESEG_MAX_VOLUME_BYTES", raising=False)
    earlier, into = HeldSeries(tmp_path / "earlier", 0.0), HeldSeries(tmp_path / "into", 0.0, shape=(4, 4))
    for part, names in ((earlier, ["a", "b", "c"]), (into, ["d"])):
        part.folder.mkdir()
        for n, name in enumerate(names, 1):
            (part.folder / f"{name}.dcm").write_bytes(b"x" * 10 * n)
            part.sizes[name], part.frames[name] = 10 * n, 1
        part.slices, part.stored = len(names), sum(part.sizes.values())
    (earlier.folder / "b.dcm").unlink()  # the work folder changed under the node
    assert absorb(into, earlier, "1.2.3")
    held = {p.stem: p.stat().st_size for p in into.folder.iterdir()}
    assert held == into.sizes == {"a": 10, "c": 30, "d": 10}
    assert (into.slices, into.stored) == (len(into.frames), sum(held.values())) == (3, 50)
    assert not earlier.folder.exists()
