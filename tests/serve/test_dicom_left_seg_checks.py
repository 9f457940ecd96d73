"""What a DICOM node's start makes of the files named as SEGs in its --work folder: --out is never
the work folder (each start would send every result again), a left SEG replaced by a SEG of
another bundle stays in its own SEG series, a file that is no SEG is set aside once and never
sent, the SEGs sent as they are go in the order they were made, and a left SEG that cannot be let
go after its replacement is forwarded neither fails the series nor stops the worker. Real SEGs
made by real bundles (the test bundle and a copy whose manifest differs); the oracle for the
bundles is the sha256 of their manifest files, read here."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
import subprocess
import sys

import pytest

from edgeseg.errors import DataError
from edgeseg.serve.dicom_left_segs import left_segs, let_go_left
from edgeseg.serve.dicom_node import DicomNode, Peer
from edgeseg.serve.dicom_series import HeldSeries
from tests.serve.test_dicom_node import SERIES

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("pynetdicom")

SEG = SERIES.parent / "liver.dcm"  # a DICOM SEG (dcmqi's example), made by no edgeseg bundle
DOWN = Peer("127.0.0.1", 9, "ARCHIVE")  # nothing is sent in these tests


def _seg_copy(target, instance: int, series: str = "1.2.826.0.1.3680043.10.1.7"):
    ds = pydicom.dcmread(SEG)
    ds.SeriesInstanceUID, ds.InstanceNumber = series, instance
    ds.SOPInstanceUID = f"{series}.{instance}"
    ds.save_as(target)
    return target


def test_out_that_is_the_work_folder_is_refused_before_anything_is_written(serve_bundle, tmp_path,
                                                                         assert_one_line_error):
    """--out equal to --work: every start took each result in --out for a SEG left unsent, linked it
    into the unsent folder, removed it from --out and sent it again. Now refused in one line, by
    path and by the folder itself (a link naming it), with nothing written in it."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "alias").symlink_to(work)
    with socket.socket() as taken:  # were it not refused, the start would stop at the port, after writing
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for out in (work, tmp_path / "alias"):
            done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "listen", str(serve_bundle), "--out", str(out),
                                   "--work", str(work), "--forward", "127.0.0.1:9:ARCHIVE", "--port", str(port)],
                                  capture_output=True, text=True, timeout=120)
            assert_one_line_error(done, "is the --work folder")
            assert list(work.iterdir()) == []
    with pytest.raises(DataError, match="is the --work folder"):
        DicomNode(None, out=tmp_path / "alias", work=work, forward=DOWN, durable=True, port=0)
    assert list(work.iterdir()) == []


def test_files_that_are_no_seg_are_set_aside_once_and_never_sent(tmp_path, caplog):
    """Not DICOM, and a CT image, named ``*.seg.dcm`` in --work: each was taken for a SEG left
    unsent and sent again at every resend round for good. Now each goes to damaged/ in one warning
    line; the real SEGs left there are sent, oldest instance first (they went newest first:
    ``UID-2.seg.dcm`` sorts before ``UID.seg.dcm``)."""
    work = tmp_path / "work"
    DicomNode(None, out=tmp_path / "out", work=work, forward=DOWN, durable=True, port=0)._claim.release()
    (work / "garbage.seg.dcm").write_bytes(b"no DICOM at all")
    shutil.copyfile(sorted(SERIES.glob("*.dcm"))[0], work / "image.seg.dcm")
    second, first = _seg_copy(work / "S-2.seg.dcm", 2), _seg_copy(work / "S.seg.dcm", 1)
    third = _seg_copy(work / "S-10.seg.dcm", 10)
    with caplog.at_level(logging.WARNING, logger="edgeseg.listen"):
        node = DicomNode(None, out=tmp_path / "out", work=work, forward=DOWN, durable=True, port=0)
    node._claim.release()
    assert node._forwarder.stranded == [(first, True), (second, True), (third, True)]
    assert sorted(p.name for p in (work / "damaged").iterdir()) == ["garbage.seg.dcm", "image.seg.dcm"]
    lines = [r.getMessage() for r in caplog.records if "is named as a SEG and is none" in r.getMessage()]
    assert len(lines) == 2 and all("never sent" in line for line in lines), lines


def _second_bundle(bundle, folder):
    """A copy of ``bundle`` whose manifest differs (another export of the same model)."""
    other = shutil.copytree(bundle, folder)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["created"] = "2001-01-01T00:00:00+00:00"
    (other / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return other


def _sha(bundle) -> str:
    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()


def test_a_left_seg_of_another_bundle_is_not_continued_by_this_one(serve_bundle, tmp_path, caplog):
    """A SEG left in --work by a node running bundle A, its series taken up in flight by a node
    running bundle B: B's SEG became the next instance of A's SEG series (the left SEG's bundle was
    read as ""). Now it starts a SEG series of its own; a node running A again continues A's."""
    from edgeseg.runtime.segmenter import Segmenter

    other = _second_bundle(serve_bundle, tmp_path / "other")
    assert _sha(other) != _sha(serve_bundle)
    uid = str(pydicom.dcmread(sorted(SERIES.glob("*.dcm"))[0]).SeriesInstanceUID)
    made = {}
    for name, bundle in (("a", serve_bundle), ("b", other), ("a2", serve_bundle)):
        with Segmenter.load(bundle, backend="onnxruntime:fp32") as segmenter:
            node = DicomNode(segmenter, out=tmp_path / f"out-{name}", work=tmp_path / f"work-{name}", port=0)
            if name == "a":
                made[name] = pydicom.dcmread(node.process(uid, SERIES))
                continue
            left = tmp_path / f"left-{name}"
            left.mkdir()
            shutil.copyfile(tmp_path / "out-a" / f"{uid}.seg.dcm", left / f"{uid}.seg.dcm")
            held = HeldSeries(folder=SERIES, last=0.0)
            assert left_segs(left, {uid: held}) == []
            with caplog.at_level(logging.WARNING, logger="edgeseg.listen"):
                made[name] = pydicom.dcmread(node.process(uid, SERIES, held.replaces, None, held.left))
    assert _sha(serve_bundle)[:12] in made["a"].ContentDescription  # what the left SEG is told by
    assert made["b"].SeriesInstanceUID != made["a"].SeriesInstanceUID and made["b"].InstanceNumber == 1
    assert made["a2"].SeriesInstanceUID == made["a"].SeriesInstanceUID and made["a2"].InstanceNumber == 2
    assert any("was made by another bundle" in r.getMessage() for r in caplog.records)


def test_a_left_seg_that_cannot_be_let_go_is_logged_not_raised(tmp_path, caplog):
    """Removing a replaced left SEG failed (here: a folder of its name) after the series' new SEGs
    were made and forwarded: the error went up into the worker, which counted the series as both
    segmented and failed and sent the left SEGs as they are beside their replacements. Now one
    error line; the series stands."""
    from edgeseg.serve.dicom_segmented import SegReference

    work = tmp_path / "work"
    ref = SegReference("1.2.3.4.1", "1.2.3.4", 1, "S.seg.dcm", 3)
    node = DicomNode(None, out=tmp_path / "out", work=work, forward=DOWN, durable=True, port=0)
    node._claim.release()
    (work / "S.seg.dcm").mkdir()
    with caplog.at_level(logging.ERROR, logger="edgeseg.listen"):
        let_go_left(node, "1.2.3", (ref,), {ref.series_instance_uid})
    assert node._forwarder.stranded == []
    assert any("cannot be let go" in r.getMessage() for r in caplog.records)
