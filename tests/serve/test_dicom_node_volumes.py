"""A series holding two volumes under one Series Instance UID (two orientations, two stacks, two
temporal positions, two acquisitions at the same positions), sent to the DICOM node by dcmtk's
storescu, gets one SEG per volume, ``UID.volK.seg.dcm``, each referencing exactly the images of
volume K and holding the masks ``edgeseg predict`` makes of those images alone; both are
forwarded. Before, the node acknowledged every image and then failed the whole series ("lie at the
same slice position", "a series must have one orientation"), writing no SEG."""

from __future__ import annotations

import pytest

from tests.dicom_volume_series import KINDS, copy_volume, make_series
from tests.guarded_cli import GuardedCliRunner
from tests.serve.test_dicom_node import _storescu, _wait_for, node, storescp  # noqa: F401 - the fixtures

pydicom = pytest.importorskip("pydicom")


def _predicted_seg(bundle, source, seg, *options) -> pydicom.Dataset:
    from edgeseg.cli.main import cli

    result = GuardedCliRunner().invoke(cli, ["predict", str(bundle), str(source), "--out", str(seg), "--format",
                                             "dicom-seg", "--backend", "onnxruntime:fp32", "--quiet", *options])
    assert result.exit_code == 0, result.output
    return pydicom.dcmread(seg)


def _referenced(seg: pydicom.Dataset) -> set[str]:
    (series,) = seg.ReferencedSeriesSequence
    return {str(item.ReferencedSOPInstanceUID) for item in series.ReferencedInstanceSequence}


@pytest.mark.parametrize("kind", KINDS)
def test_the_node_writes_one_seg_per_volume(node, storescp, serve_bundle, tmp_path, kind):
    _, received = storescp
    volumes = make_series(tmp_path / "series", KINDS[kind])
    sent = _storescu(node.port, sorted((tmp_path / "series").iterdir()))
    assert sent.returncode == 0, sent.stderr
    assert _wait_for(lambda: len(node.stats.forwarded) == 2), (node.stats, sent.stderr)
    uid = str(pydicom.dcmread(volumes[0][0]).SeriesInstanceUID)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.seg.dcm")) == [f"{uid}.vol1.seg.dcm", f"{uid}.vol2.seg.dcm"]
    assert node.stats.segmented == [uid] and not node.stats.failed
    segs = []
    for number, files in enumerate(volumes, start=1):
        seg = pydicom.dcmread(tmp_path / "out" / f"{uid}.vol{number}.seg.dcm")
        assert _referenced(seg) == {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
        alone = _predicted_seg(serve_bundle, copy_volume(files, tmp_path / f"alone{number}"), tmp_path / f"{number}.dcm")
        assert _referenced(alone) == _referenced(seg)
        assert seg.pixel_array.shape == alone.pixel_array.shape and int((seg.pixel_array != alone.pixel_array).sum()) == 0
        segs.append(seg)
    assert segs[0].SeriesInstanceUID != segs[1].SeriesInstanceUID  # each volume's SEG a series of its own
    forwarded = {str(pydicom.dcmread(p).SOPInstanceUID) for p in received.iterdir()}
    assert forwarded == {str(seg.SOPInstanceUID) for seg in segs}


def _source_frames(seg: pydicom.Dataset) -> set[int]:
    """The source frame numbers the SEG's frames are derived from."""
    return {int(source.ReferencedFrameNumber) for frame in seg.PerFrameFunctionalGroupsSequence
            for derivation in frame.DerivationImageSequence for source in derivation.SourceImageSequence}


def test_an_enhanced_ct_over_two_temporal_positions_gets_one_seg_per_position(node, storescp, serve_bundle, tmp_path):
    """Before, the node refused the file as it arrived (0xA900, "several temporal positions")."""
    from tests.dicom_volume_series import make_enhanced_temporal

    path, _ = make_enhanced_temporal(tmp_path)
    sent = _storescu(node.port, [path])
    assert sent.returncode == 0, sent.stderr
    assert _wait_for(lambda: len(node.stats.forwarded) == 2), (node.stats, sent.stderr)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    for number in (1, 2):
        seg = pydicom.dcmread(tmp_path / "out" / f"{source.SeriesInstanceUID}.vol{number}.seg.dcm")
        assert _referenced(seg) == {str(source.SOPInstanceUID)}
        assert _source_frames(seg) and _source_frames(seg) <= set(range(number, 7, 2))  # its own frames only
        predicted = _predicted_seg(serve_bundle, path, tmp_path / f"{number}.dcm", "--volume", str(number))
        assert _source_frames(predicted) == _source_frames(seg)
        assert int((seg.pixel_array != predicted.pixel_array).sum()) == 0


def _patient_sex_x(ds, volume: int, slice_index: int) -> None:
    """The stack series, volume 2's images with a PatientSex no SEG can copy: refused by the SEG
    source checks, not by the reader nor at the node's intake."""
    KINDS["stack"](ds, volume, slice_index)
    if volume == 1:
        ds.PatientSex = "X"


def test_a_series_whose_second_volume_fails_gets_no_seg_at_all(serve_bundle, storescp, tmp_path, free_port, wait_port):
    """The series yields the SEGs of all its volumes or none. Before, volume 1's SEG was written,
    audited as segmented and left in --out (never forwarded, never cleaned up) before volume 2's
    sources were checked; the series then got a second, failed, audit line."""
    import json

    from edgeseg.runtime.provenance import provenance
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.audit import AuditLog
    from edgeseg.serve.dicom_node import DicomNode

    peer, received = storescp
    volumes = make_series(tmp_path / "series", _patient_sex_x)
    uid = str(pydicom.dcmread(volumes[0][0]).SeriesInstanceUID)
    segmenter = Segmenter.load(serve_bundle, backend="onnxruntime:fp32")
    audit = AuditLog(tmp_path / "audit.jsonl", provenance(segmenter))
    node = DicomNode(segmenter, port=free_port(), out=tmp_path / "out", forward=peer, idle=600, work=tmp_path / "work",
                     audit=audit)
    node.start()
    try:
        wait_port(node.port)
        sent = _storescu(node.port, sorted((tmp_path / "series").iterdir()))
        assert sent.returncode == 0, sent.stderr
        node.idle = 0  # complete once all is stored
        assert _wait_for(lambda: node.stats.failed or node.stats.segmented), node.stats
    finally:
        node.stop()
        segmenter.close()
        audit.close()
    assert node.stats.failed == [uid] and not node.stats.segmented and not node.stats.forwarded
    assert not list((tmp_path / "out").glob("*.seg.dcm")) and not list(received.iterdir())
    assert not list((tmp_path / "work").rglob("*.seg.dcm"))
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    series = [line for line in lines if line["event"] == "series"]
    assert [(line["series_uid"], line["outcome"]) for line in series] == [(uid, "failed")], series
    assert "PatientSex is 'X'" in series[0]["error"], series[0]


def test_a_scout_sent_with_the_series_is_left_out_of_its_seg(node, storescp, tmp_path):
    """Before, the coronal scout was volume 1 of two: the node wrote UID.vol1.seg.dcm of the scout
    alone and UID.vol2.seg.dcm of the slices."""
    from tests.dicom_volume_series import make_one_series

    files = make_one_series(tmp_path / "series", scouts=1)
    sent = _storescu(node.port, sorted((tmp_path / "series").iterdir()))
    assert sent.returncode == 0, sent.stderr
    assert _wait_for(lambda: node.stats.forwarded), (node.stats, sent.stderr)
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    assert [p.name for p in (tmp_path / "out").glob("*.seg.dcm")] == [f"{uid}.seg.dcm"]
    seg = pydicom.dcmread(tmp_path / "out" / f"{uid}.seg.dcm")
    assert _referenced(seg) == {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}


def test_a_seg_removed_when_a_later_volume_fails_is_removed_on_disk_too(serve_bundle, tmp_path, free_port, wait_port,
                                                                        monkeypatch, caplog):
    """Volume 2 is refused as the model segments it (its field of view, 415 mm, outside the
    bundle's training data's, under --fov-check refuse) after volume 1's SEG (192 mm) was written
    and flushed: volume 1's SEG is removed, and in a durable --work folder (each SEG flushed to
    disk as written) its removal is flushed too. Before, the folder was not flushed after the removal: a
    power cut could bring back a SEG of part of the series."""
    import os

    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.dicom_node import DicomNode

    def stack_and_spacing(ds, volume, slice_index):
        KINDS["stack"](ds, volume, slice_index)
        if volume == 0:
            ds.PixelSpacing = [0.375, 0.375]  # 512 columns: 192 mm, the training data's

    volumes = make_series(tmp_path / "series", stack_and_spacing)
    uid = str(pydicom.dcmread(volumes[0][0]).SeriesInstanceUID)
    out, first = tmp_path / "out", tmp_path / "out" / f"{uid}.vol1.seg.dcm"
    flushed: list[bool] = []  # at each flush of --out: whether volume 1's SEG was in it
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        real_fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}") == str(out):
            flushed.append(first.exists())

    monkeypatch.setattr(os, "fsync", recording)
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32", fov_check="refuse") as segmenter:
        node = DicomNode(segmenter, port=free_port(), out=out, idle=0.5, work=tmp_path / "work", durable=True)
        node.start()
        try:
            wait_port(node.port)
            sent = _storescu(node.port, sorted((tmp_path / "series").iterdir()))
            assert sent.returncode == 0, sent.stderr
            assert _wait_for(lambda: node.stats.failed or node.stats.segmented), node.stats
        finally:
            node.stop()
    assert node.stats.failed == [uid] and not node.stats.segmented
    assert not first.exists() and not list(out.glob("*.seg.dcm"))
    assert "field of view 415 mm" in caplog.text
    # the flushes at which volume 1's SEG was on disk, and those after it was removed
    on_disk = [k for k, present in enumerate(flushed) if present]
    assert on_disk, f"volume 1's SEG was never on disk at a flush of --out: {flushed}"
    removed_later = [k for k, present in enumerate(flushed) if k > on_disk[0] and not present]
    assert removed_later, f"its removal was never flushed: {flushed}"


def test_a_forward_failing_unexpectedly_stops_neither_the_other_segs_nor_the_series(serve_bundle, storescp, tmp_path,
                                                                                      free_port, wait_port, caplog):
    """A CT slice left in the unsent folder (no SEG: the C-STORE it is sent in has no context for
    it, pynetdicom's ValueError) fails the resend that follows SEG 1's forward. That failure ended
    the forwarding: SEG 2 was never sent and the series, audited as segmented, was audited again as
    failed. Each SEG is now forwarded on its own; the failure is the resend's, logged as the stray
    file left waiting with its cause (it was logged as SEG 1's forwarding failing, which it did not)."""
    import json
    import shutil

    from edgeseg.runtime.provenance import provenance
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.audit import AuditLog
    from edgeseg.serve.dicom_node import DicomNode

    peer, received = storescp
    volumes = make_series(tmp_path / "series", KINDS["stack"])
    uid = str(pydicom.dcmread(volumes[0][0]).SeriesInstanceUID)
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
        audit = AuditLog(tmp_path / "audit.jsonl", provenance(segmenter))
        node = DicomNode(segmenter, port=free_port(), out=tmp_path / "out", forward=peer, idle=0.5,
                         work=tmp_path / "work", audit=audit, unsent=tmp_path / "unsent", resend_every=3600)
        node.start()
        try:
            wait_port(node.port)
            (tmp_path / "unsent").mkdir(exist_ok=True)
            shutil.copyfile(volumes[0][0], tmp_path / "unsent" / "stray.seg.dcm")
            sent = _storescu(node.port, sorted((tmp_path / "series").iterdir()))
            assert sent.returncode == 0, sent.stderr
            assert _wait_for(lambda: node.stats.failed or len(node.stats.forwarded) >= 2), node.stats
        finally:
            node.stop()
            audit.close()
    assert node.stats.forwarded == [f"{uid}.vol1.seg.dcm", f"{uid}.vol2.seg.dcm"], node.stats
    assert node.stats.segmented == [uid] and not node.stats.failed
    assert len(list(received.iterdir())) == 2
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [line["outcome"] for line in lines if line["event"] == "series"] == ["segmented", "segmented"], lines
    assert f"forwarding {uid}.vol1.seg.dcm failed" not in caplog.text
    assert f"1 SEG(s) still wait in {tmp_path / 'unsent'} after 0 sent: ValueError: No presentation context" in caplog.text
    assert [p.name for p in (tmp_path / "unsent").iterdir()] == ["stray.seg.dcm"]
