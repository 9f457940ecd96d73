"""How the DICOM node writes an image into its --work folder before it answers Success: a flush
the disk refuses makes the image not stored, a folder renamed for a late image is flushed before
the image is acknowledged, and one series' writing does not hold up another's (the node's lock is
not held while the disk is flushed), with every bound as exact as before.

The disk's own failures (EIO from fsync) cannot be caused here without a block device, so
``os.fsync`` is wrapped: the real call is made, and the wrapper records which folder it flushed,
fails it, or holds it until told."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from tests.serve.test_dicom_node import DCMTK, SERIES, _storescu, _wait_for
from tests.serve.test_dicom_node_durable import _node_folder
from tests.serve.test_dicom_node_slow_series import _referenced

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")

REAL_FSYNC = os.fsync


def _named(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _series_copy(tmp_path: Path, name: str, suffix: str) -> list[Path]:
    """The three test images as another series (Series Instance UID + ``suffix``), in tmp_path/name."""
    folder = tmp_path / name
    folder.mkdir()
    for path in sorted(SERIES.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + suffix
        ds.SOPInstanceUID = ds.SOPInstanceUID + suffix
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / path.name)
    return sorted(folder.glob("*.dcm"))


def test_a_file_system_that_does_not_sync_folders_is_passed_over():
    """/proc answers a folder's fsync with EINVAL (a real one): not a failure of the image."""
    from edgeseg.serve.dicom_work import sync_folder

    sync_folder(Path("/proc/self"))


def test_a_folder_gone_before_its_flush_is_not_stored(tmp_path):
    """A real failure of the folder flush (its folder gone): raised, not passed over."""
    from edgeseg.serve.dicom_work import sync_folder

    with pytest.raises(FileNotFoundError):
        sync_folder(tmp_path / "gone")


def test_a_folder_flush_the_disk_refuses_leaves_the_image_not_stored(tmp_path, monkeypatch):
    """EIO from the folder's fsync (the rename not known to be on disk): ImageNotStored, counted
    nowhere. (It was swallowed with EINVAL, and the image acknowledged.)"""
    from edgeseg.serve.dicom_series import HeldSeries, ImageNotStored

    def failing(fd: int) -> None:
        REAL_FSYNC(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    ds = pydicom.dcmread(sorted(SERIES.glob("*.dcm"))[0])
    series = HeldSeries(tmp_path / "work" / "series", 0.0, durable=True)
    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(ImageNotStored, match="Input/output error"):
        series.keep(str(ds.SOPInstanceUID), ds, 1)
    assert (series.stored, series.slices, series.sizes) == (0, 0, {})


@pytest.mark.skipif(not DCMTK, reason="dcmtk (storescu) is not installed")
def test_a_peer_is_not_told_success_for_an_image_whose_flush_failed(serve_bundle, tmp_path, free_port, monkeypatch,
                                                                     caplog):
    """The node's side of the above: the peer gets the failure status 0xA700, the error is
    logged, the image is counted nowhere and its series gives its slot back (its folder removed)."""
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.dicom_node import DicomNode

    def failing(fd: int) -> None:
        REAL_FSYNC(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode) and "work" in _named(fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    work = tmp_path / "work"
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as real:
        node = DicomNode(real, port=free_port(), out=tmp_path / "out", idle=600, work=work, durable=True)
        monkeypatch.setattr(os, "fsync", failing)
        node.start()
        try:
            done = _storescu(node.port, sorted(SERIES.glob("*.dcm"))[:1])
        finally:
            node.stop()
    assert "Refused: OutOfResources" in done.stdout + done.stderr, done.stdout + done.stderr
    assert "cannot store it in" in caplog.text and "Input/output error" in caplog.text
    assert node.stats.received == 0 and node.stats.refused == 1
    assert sorted(p.name for p in work.iterdir()) == ["listen.lock", "listen.refused", "listen.work"]  # noted


def test_a_kept_series_taken_up_again_has_its_new_name_flushed_with_its_next_image(tmp_path, monkeypatch):
    """UID.segmented renamed back to UID for a late image: the work folder is flushed after that
    rename and before the image's keep() returns (its Success); a power cut would otherwise leave
    the image in a folder still named UID.segmented on disk, given up when its keep time ends."""
    from edgeseg.serve.dicom_segmented import SegmentedSeries, SegReference
    from edgeseg.serve.dicom_series import HeldSeries

    work = tmp_path / "work"
    work.mkdir()
    files = sorted(SERIES.glob("*.dcm"))
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    series = HeldSeries(work / f"{uid}.taken-1", 0.0, durable=True)
    for path in files[:2]:
        ds = pydicom.dcmread(path)
        series.keep(str(ds.SOPInstanceUID), ds, 1)
    kept = SegmentedSeries(work, 600, durable=True)
    kept.made(uid, (SegReference("1.2.3", "1.2.4", 1, f"{uid}.seg.dcm", 2),))
    kept.keep(uid, series, 0.0, None)
    assert (work / f"{uid}.segmented").is_dir()
    flushed: list[str] = []

    def recording(fd: int) -> None:
        REAL_FSYNC(fd)
        flushed.append(_named(fd))

    monkeypatch.setattr(os, "fsync", recording)
    late = kept.resume(uid, work / uid)
    ds = pydicom.dcmread(files[2])
    late.keep(str(ds.SOPInstanceUID), ds, 1)
    assert str(work) in flushed, flushed  # the rename UID.segmented -> UID is on disk
    assert flushed[-1] == str(work) or flushed.index(str(work)) > flushed.index(str(work / uid))
    flushed.clear()
    ds = pydicom.dcmread(files[1])
    late.keep(str(ds.SOPInstanceUID), ds, 1)  # once is enough
    assert str(work) not in flushed


@pytest.mark.skipif(not DCMTK, reason="dcmtk (storescu) is not installed")
@pytest.mark.parametrize("max_series", [1, 2])
def test_concurrent_senders_keep_max_series_and_every_image_acknowledged_is_segmented(
        serve_bundle, tmp_path, free_port, max_series):
    """Three associations sending three series at once: no more
    than --max-series series are taken (the others refused, 0xA700), and the SEG of each series
    taken references exactly the images acknowledged of it."""
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.dicom_node import DicomNode

    copies = [_series_copy(tmp_path, f"s{n}", f".8{n}") for n in range(3)]
    out, results = tmp_path / "out", {}
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as real:
        node = DicomNode(real, port=free_port(), out=out, idle=600, work=tmp_path / "work", durable=True,
                         max_series=max_series)
        node.start()
        try:
            senders = [threading.Thread(target=lambda n=n: results.__setitem__(n, _storescu(node.port, copies[n])))
                       for n in range(3)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join(120)
            assert _wait_for(lambda: len(results) == 3, 60)
            held = [p for p in (tmp_path / "work").iterdir() if p.is_dir() and p.name != "received"]
            assert len(held) == max_series
        finally:
            node.stop()
    acknowledged = {n for n, done in results.items() if "OutOfResources" not in done.stderr + done.stdout}
    assert len(acknowledged) == max_series and node.stats.received == 3 * max_series
    for n in acknowledged:
        uid = pydicom.dcmread(copies[n][0]).SeriesInstanceUID
        assert _referenced(out / f"{uid}.seg.dcm") == {str(pydicom.dcmread(f).SOPInstanceUID) for f in copies[n]}


@pytest.mark.skipif(not DCMTK, reason="dcmtk (storescu) is not installed")
@pytest.mark.parametrize("made_by", ["another", "this", "unknown"])
def test_a_late_image_after_a_restart_with_another_bundle_starts_a_seg_series_of_its_own(
        serve_bundle, tmp_path, free_port, caplog, made_by):
    """A kept series whose SEG another bundle made (its manifest's sha256 in .seg.json): the SEG of
    it with a late image starts a SEG series of its own, logged; made by this bundle, or by one not
    noted (a .seg.json written before the field was), it is the next instance of that SEG series.
    The SEG made is noted with this bundle's manifest sha256."""
    import json
    import time

    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.dicom_node import DicomNode

    files, work, out = sorted(SERIES.glob("*.dcm")), tmp_path / "work", tmp_path / "out"
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    _node_folder(work)
    (work / f"{uid}.segmented").mkdir()
    for path in files[:2]:
        (work / f"{uid}.segmented" / f"{pydicom.dcmread(path).SOPInstanceUID}.dcm").write_bytes(path.read_bytes())
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as real:
        this = real.manifest.sha256
        reference = {"sop_instance_uid": "1.2.826.0.1.3680043.8.498.1",
                     "series_instance_uid": "1.2.826.0.1.3680043.8.498.2", "instance_number": 1, "file": f"{uid}.seg.dcm", "slices": 2, "until": time.time() + 600,
                     **({"another": {"bundle": "0" * 64}, "this": {"bundle": this}, "unknown": {}}[made_by])}
        (work / f"{uid}.segmented" / ".seg.json").write_text(json.dumps(reference))
        node = DicomNode(real, port=free_port(), out=out, idle=0.5, work=work, durable=True)
        node.start()
        try:
            assert _storescu(node.port, files[2:]).returncode == 0
            assert _wait_for(lambda: len(list((work / f"{uid}.segmented").glob("*.dcm"))) == 3, 60)
        finally:
            node.stop()
    # the next instance is named by its number (UID-2.seg.dcm), though UID.seg.dcm is not in --out
    [made] = out.glob("*.seg.dcm")
    assert made.name == (f"{uid}.seg.dcm" if made_by == "another" else f"{uid}-2.seg.dcm")
    seg = pydicom.dcmread(made)
    assert _referenced(made) == {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    continued = (str(seg.SeriesInstanceUID), int(seg.InstanceNumber)) == (reference["series_instance_uid"], 2)
    assert continued == (made_by != "another")
    assert ("was made by another bundle" in caplog.text) == (made_by == "another")
    [noted] = json.loads((work / f"{uid}.segmented" / ".seg.json").read_text())["segs"]  # the series' one volume
    assert noted["bundle"] == this


def test_the_note_of_the_seg_a_kept_series_was_made_into_is_on_disk(tmp_path, monkeypatch):
    """``.seg.json`` beside a series kept for late images is flushed under its staged name, then
    its rename flushed (its folder's fsync), as every image is: a power cut would otherwise leave
    the images without the note, and the next node would make a SEG of its own instead of one
    replacing the SEG made. (It was renamed into place without either flush.)"""
    from edgeseg.serve.dicom_segmented import SegmentedSeries, SegReference
    from edgeseg.serve.dicom_series import HeldSeries
    from edgeseg.serve.dicom_work import REFERENCE_NAME

    work = tmp_path / "work"
    work.mkdir()
    files = sorted(SERIES.glob("*.dcm"))
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    series = HeldSeries(work / f"{uid}.taken-1", 0.0, durable=True)
    ds = pydicom.dcmread(files[0])
    series.keep(str(ds.SOPInstanceUID), ds, 1)
    kept = SegmentedSeries(work, 600, durable=True)
    kept.made(uid, (SegReference("1.2.3", "1.2.4", 1, f"{uid}.seg.dcm", 1),))
    flushed: list[str] = []

    def recording(fd: int) -> None:
        REAL_FSYNC(fd)
        flushed.append(_named(fd))

    monkeypatch.setattr(os, "fsync", recording)
    kept.keep(uid, series, 0.0, None)
    folder = work / f"{uid}.segmented"
    assert (folder / REFERENCE_NAME).is_file()
    note = [n for n, path in enumerate(flushed) if Path(path).parent == folder and REFERENCE_NAME in Path(path).name]
    assert note, flushed  # the note's bytes
    assert str(folder) in flushed[note[-1]:], flushed  # then its rename
