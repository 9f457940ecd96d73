"""The DICOM node receiving Enhanced CT (and Legacy Converted Enhanced CT) multi-frame files from
real peers (dcmtk's storescu, pynetdicom): the SEG it writes equals ``edgeseg predict``'s SEG of
the same file, references the file's frames and passes dciodvfy; a file the reader would refuse
is refused as it arrives with the reader's reason; a series sent both as an Enhanced CT and as
single-frame slices keeps the form that came first and refuses the other, image by image."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.enhanced_ct import read_slices, write_enhanced_ct
from tests.serve.test_dicom_node import DCMTK, SERIES, _wait_for
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")

LEGACY_CONVERTED = "1.2.840.10008.5.1.4.1.1.2.2"
ORDER = [2, 0, 1]  # the frames out of slice order, as a scanner may store them


def _enhanced(path, sop_class: str | None = None, change=None):
    """An Enhanced CT of the three-slice series at ``path`` (of ``sop_class`` if given; ``change``d)."""
    write_enhanced_ct(read_slices(SERIES), path, ORDER)
    if sop_class is not None or change is not None:
        ds = pydicom.dcmread(path)
        if sop_class is not None:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        if change is not None:
            change(ds)
        ds.save_as(path, enforce_file_format=True)
    return path


def _storescu(port: int, files, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-d", "-R", *options, "-aec", "EDGESEG", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=60)


def _statuses(done: subprocess.CompletedProcess) -> list[str]:
    return [line.split(":", 2)[2].strip() for line in done.stderr.splitlines() if "DIMSE Status" in line]


def _frames_by_source(seg) -> dict[int, np.ndarray]:
    """Each SEG frame by the source frame it references (one segment)."""
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    return {int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber): frame
            for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence)}


@pytest.mark.parametrize("sop_class", [None, LEGACY_CONVERTED], ids=["enhanced", "legacy-converted"])
def test_listen_segments_an_enhanced_ct_as_predict_does(serve_bundle, tmp_path, free_port, wait_port, sop_class):
    """``edgeseg listen`` answered an Enhanced CT with 0x0122 "SOP class not supported". Now
    storescu's file is stored, and its SEG, in --out and forwarded to storescp, equals the SEG
    ``edgeseg predict`` writes of the same file, frame by frame, references each of its frames,
    and passes dciodvfy."""
    from tests.serve.test_dicom_node_hostile import start_listen, stop_listen

    source = _enhanced(tmp_path / "in" / "e.dcm", sop_class)
    expected = tmp_path / "predict.seg.dcm"
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(serve_bundle), str(source), "--out",
                           str(expected), "--backend", "onnxruntime:fp32", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    received = tmp_path / "received"
    received.mkdir()
    archive_port, port = free_port(), free_port()
    archive = subprocess.Popen(["storescp", "-aet", "ARCHIVE", "-od", str(received), str(archive_port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port(archive_port)
        proc = start_listen(serve_bundle, port, tmp_path, "--idle", "0.5",
                            "--forward", f"127.0.0.1:{archive_port}:ARCHIVE")
        try:
            wait_port(port, timeout=60)
            sent = _storescu(port, [source])
            assert _wait_for(lambda: list(received.glob("*")), 120), sent.stderr
        finally:
            err = stop_listen(proc)
    finally:
        archive.terminate()
        archive.wait(timeout=10)
    assert _statuses(sent) == ["0x0000: Success"], sent.stderr
    [written] = (tmp_path / "out").glob("*.seg.dcm")
    [forwarded] = received.glob("*")
    ct = pydicom.dcmread(source, stop_before_pixels=True)
    want = _frames_by_source(pydicom.dcmread(expected))
    assert np.any([frame.any() for frame in want.values()])  # the model found liver: the comparison covers labels
    for path in (written, forwarded):
        seg = pydicom.dcmread(path)
        got = _frames_by_source(seg)
        assert sorted(got) == [1, 2, 3] and sorted(want) == [1, 2, 3]
        assert sum(int(np.count_nonzero(got[k] != want[k])) for k in want) == 0
        [series] = seg.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == ct.SeriesInstanceUID
        assert [item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence] == [ct.SOPInstanceUID]
    assert "Traceback" not in err, err
    if shutil.which("dciodvfy"):
        checked = subprocess.run(["dciodvfy", str(written)], capture_output=True, text=True)
        lines = (checked.stdout + checked.stderr).splitlines()
        assert "Segmentation" in lines and [line for line in lines if line.startswith("Error")] == [], lines


def _without_plane_position(ds):
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence


def _same_position(ds):
    """Frames 1 and 3 at one position, nothing telling them apart (two stacks are split into
    volumes instead: test_dicom_node_volumes.py)."""
    frames = ds.PerFrameFunctionalGroupsSequence
    frames[2].PlanePositionSequence[0].ImagePositionPatient = frames[0].PlanePositionSequence[0].ImagePositionPatient


@pytest.mark.parametrize("change, reason", [
    (_without_plane_position, "frame 2 has no PlanePositionSequence in its per-frame or shared functional groups"),
    (_same_position, "frame 1 and "),
], ids=["no-plane-position", "same-position"])
def test_an_enhanced_ct_the_reader_refuses_is_refused_as_it_arrives(running_node, tmp_path, caplog, change, reason):
    """A malformed Enhanced CT is refused at its C-STORE with 0xA900, the reader's reason in the
    Error Comment and in one log line, counted refused in the audit log's association line,
    nothing stored; as a malformed slice is."""
    import json

    from edgeseg.serve.audit import AuditLog

    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    source = _enhanced(tmp_path / "bad.dcm", change=change)
    audit = AuditLog(tmp_path / "audit.jsonl")
    try:
        with running_node(audit=audit) as node:
            sent = _storescu(node.port, [source])
            stored = list(node.work.rglob("*.dcm"))
            assert _wait_for(lambda: "association" in (tmp_path / "audit.jsonl").read_text())
    finally:
        audit.close()
    [association] = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()
                     if json.loads(line)["event"] == "association"]
    assert (association["stored"], association["refused"], association["outcome"]) == (0, 1, "released"), association
    [status] = _statuses(sent)
    assert status.startswith("0xa900"), status
    [comment] = [line for line in sent.stderr.splitlines() if "(0000,0902)" in line]
    assert reason[:30] in comment, comment
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused image")]
    assert len(lines) == 1 and reason in lines[0], lines
    assert stored == [] and node.stats.received == 0 and node.stats.refused == 1


@pytest.mark.parametrize("first", ["enhanced", "slices"])
def test_a_series_sent_both_as_an_enhanced_ct_and_as_slices_keeps_the_first_form(running_node, tmp_path, caplog,
                                                                                 first):
    """The same series as an Enhanced CT and as its single-frame slices, in one association: were
    both stored, the series read would fail ("a series is read from one multi-frame file or from
    single-frame slices, not both") after every image was acknowledged. The form that comes first
    is stored and segmented; each image of the other is refused with 0xA900, saying why."""
    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    slices = read_slices(SERIES)
    series_uid = slices[0].SeriesInstanceUID
    source = _enhanced(tmp_path / "e.dcm", change=lambda ds: setattr(ds, "SeriesInstanceUID", series_uid))
    files = [source, *sorted(SERIES.glob("*.dcm"))]
    if first == "slices":
        files = files[1:] + files[:1]
    with running_node() as node:
        sent = _storescu(node.port, files, "-nh")  # -nh: on past a refusal, every file sent
        assert _wait_for(lambda: node.stats.segmented or node.stats.failed), node.stats
    statuses = _statuses(sent)
    assert len(statuses) == len(files), sent.stderr
    refused = 3 if first == "enhanced" else 1
    assert statuses[:len(files) - refused] == ["0x0000: Success"] * (len(files) - refused), statuses
    assert all(status.startswith("0xa900") for status in statuses[len(files) - refused:]), statuses
    assert "a series comes as one multi-frame file or as single-frame slices" in caplog.text
    assert node.stats.failed == [] and node.stats.segmented == [series_uid]
    [seg] = (tmp_path / "out").glob("*.seg.dcm")
    references = pydicom.dcmread(seg).ReferencedSeriesSequence[0].ReferencedInstanceSequence
    expected = ([pydicom.dcmread(source).SOPInstanceUID] if first == "enhanced"
                else sorted(str(ds.SOPInstanceUID) for ds in slices))
    assert sorted(str(item.ReferencedSOPInstanceUID) for item in references) == expected


@pytest.mark.skipif(not shutil.which("dcmcrle"), reason="dcmtk's dcmcrle is not installed")
def test_an_rle_compressed_enhanced_ct_reaches_the_model_as_the_series_hu(running_node, tmp_path):
    """An Enhanced CT compressed by dcmtk's dcmcrle, sent in RLE Lossless by storescu: decoded as
    it arrives, every frame, and the model is handed the HU the reader reads of the single-frame
    series it was made from."""
    from edgeseg.data.dicom import read_dicom_series
    from tests.serve.test_dicom_node_decodes import _Capture

    source = _enhanced(tmp_path / "e.dcm")
    compressed = tmp_path / "rle" / "e.dcm"
    compressed.parent.mkdir()
    subprocess.run(["dcmcrle", str(source), str(compressed)], check=True, capture_output=True, timeout=60)
    assert pydicom.dcmread(compressed, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    with running_node(wrap=_Capture) as node:
        sent = subprocess.run(["storescu", "-xr", "-R", "-aec", "EDGESEG", "127.0.0.1", str(node.port), str(compressed)],
                              capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0 and "Failed" not in sent.stderr, sent.stderr
        assert _wait_for(lambda: node.stats.segmented or node.stats.failed), node.stats
    assert node.stats.failed == []
    [volume] = node.segmenter.volumes
    np.testing.assert_array_equal(volume.hu, read_dicom_series(SERIES).hu)


def test_enhanced_ct_is_negotiated_in_the_compressed_syntaxes_decoded_here(running_node):
    """pynetdicom proposing the Enhanced CT classes in RLE Lossless only: accepted, as CT Image
    Storage is (it was rejected, so a peer holding its files compressed could not send them)."""
    from pydicom.uid import RLELossless

    from edgeseg.serve.dicom_intake import ENHANCED_CT_CLASSES

    ae = pynetdicom.AE(ae_title="CT")
    for sop_class in ENHANCED_CT_CLASSES:
        ae.add_requested_context(sop_class, [RLELossless])
    with running_node() as node:
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESEG")
        try:
            accepted = sorted(str(cx.abstract_syntax) for cx in assoc.accepted_contexts)
        finally:
            assoc.release()
    assert accepted == sorted(ENHANCED_CT_CLASSES)


def test_an_enhanced_ct_proposed_in_a_syntax_not_decoded_here_is_logged(running_node, caplog):
    """A peer proposing Enhanced CT in MPEG2 alone has that context rejected, and the node's log
    names the peer and the syntax (it named CT Image Storage contexts only)."""
    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    ae = pynetdicom.AE(ae_title="CT")
    ae.add_requested_context(LEGACY_CONVERTED, ["1.2.840.10008.1.2.4.100"])
    ae.add_requested_context(pynetdicom.sop_class.Verification)
    with running_node() as node:
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESEG")
        try:
            accepted = [str(cx.abstract_syntax) for cx in assoc.accepted_contexts]
        finally:
            assoc.release()
        assert _wait_for(lambda: "proposed CT images" in caplog.text, 10)
    assert LEGACY_CONVERTED not in accepted
    [line] = [r.getMessage() for r in caplog.records if "proposed CT images" in r.getMessage()]
    assert line.startswith("CT (127.0.0.1:") and "MPEG2" in line, line


def test_the_intake_names_the_readers_enhanced_ct_classes():
    """The node's list of Enhanced CT classes is the reader's (named apart to keep pydicom out of
    the node's imports)."""
    from edgeseg.data.dicom_slice import MULTI_FRAME_CT_CLASSES
    from edgeseg.serve.dicom_intake import ENHANCED_CT_CLASSES

    assert set(ENHANCED_CT_CLASSES) == set(MULTI_FRAME_CT_CLASSES)


def test_an_enhanced_ct_received_while_its_series_of_slices_is_segmented_makes_a_seg_of_its_own(
        serve_bundle, tmp_path, free_port, wait_port, caplog):
    """The slices of a series are being segmented (the model is held) when an Enhanced CT of the
    same series arrives: its store sees no slice held (they were taken to be segmented), and once
    the slices' SEG was made their images were moved to it, and its series failed when read. The
    two forms are now kept apart: the Enhanced CT makes a SEG of its own, of its frames, in a SEG
    series of its own (logged), and nothing fails."""
    from tests.serve.test_dicom_node_late_images import model_held
    from tests.serve.test_dicom_node_slow_series import _running

    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    files = sorted(SERIES.glob("*.dcm"))
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    source = _enhanced(tmp_path / "e.dcm", change=lambda ds: setattr(ds, "SeriesInstanceUID", uid))
    with _running(serve_bundle, tmp_path, free_port, wait_port) as node:
        with model_held(node) as entered:
            assert _storescu(node.port, files).returncode == 0
            assert entered.wait(60), node.stats  # the slices are being segmented
            assert _storescu(node.port, [source]).returncode == 0  # held apart
        assert _wait_for(lambda: len(node.stats.segmented) + len(node.stats.failed) == 2, 60), node.stats
    assert node.stats.failed == [] and node.stats.segmented == [uid, uid]
    first, second = (pydicom.dcmread(tmp_path / "out" / name) for name in (f"{uid}.seg.dcm", f"{uid}-2.seg.dcm"))
    assert second.SeriesInstanceUID != first.SeriesInstanceUID
    [instance] = second.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert instance.ReferencedSOPInstanceUID == pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    assert "one side is a multi-frame image" in caplog.text
