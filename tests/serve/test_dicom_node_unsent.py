"""A SEG the DICOM node made is never lost to a failed forwarding, whatever fails: a fault inside
the send itself (a peer accepting a transfer syntax that was never proposed, which pynetdicom
raises ValueError on), or an unsent folder that cannot be written. dcmtk's storescp is the
archive; a relay between the node and it changes the peer's A-ASSOCIATE-AC."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess

import pytest

from edgeseg.serve.dicom_node import Peer
from tests.serve.dicom_relay import PausingRelay
from tests.serve.test_dicom_node import DCMTK, SERIES, _storescu, _wait_for
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")

EXPLICIT_LE = b"\x40\x00\x00\x131.2.840.10008.1.2.1"  # a transfer syntax sub-item of the A-ASSOCIATE-AC
EXPLICIT_BE = b"\x40\x00\x00\x131.2.840.10008.1.2.2"  # the same length: the PDU's lengths hold


def _big_endian_accepted(pdu: bytes) -> bytes:
    """The peer's A-ASSOCIATE-AC (PDU type 2) accepting Explicit VR Big Endian, never proposed."""
    return pdu.replace(EXPLICIT_LE, EXPLICIT_BE) if pdu[0] == 2 else pdu


def _archive(port: int, folder):
    """storescp keeping each data set as it came (+B), AE title ARCHIVE, on ``port``."""
    folder.mkdir(exist_ok=True)
    return subprocess.Popen(["storescp", "+B", "-aet", "ARCHIVE", "-od", str(folder), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def _archive_open(port: int, folder, wait_port):
    """:func:`_archive`, listening on ``port`` while the context is open."""
    archive = _archive(port, folder)
    try:
        wait_port(port)
        yield
    finally:
        archive.terminate()
        archive.wait(timeout=10)


def _series_and_blocked_unsent(tmp_path):
    """The test series' files and Series Instance UID, and an unsent folder whose name a file holds."""
    unsent = tmp_path / "unsent"
    unsent.write_text("in the way")
    files = sorted(SERIES.glob("*.dcm"))
    return files, pydicom.dcmread(files[0]).SeriesInstanceUID, unsent


def _data_set(path) -> bytes:
    """The bytes of the data set of the DICOM file ``path``, after its file meta information."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    return path.read_bytes()[128 + 4 + 12 + meta.FileMetaInformationGroupLength:]


def _errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "edgeseg.listen"]


def test_a_fault_inside_the_send_leaves_the_seg_in_unsent_until_the_next_round(running_node, tmp_path, free_port,
                                                                              wait_port, caplog):
    """The peer's A-ASSOCIATE-AC accepts Explicit VR Big Endian, which the node never proposed:
    pynetdicom takes it and raises ValueError in send_c_store, no EdgesegError. Without --out the
    node logged the error and removed the SEG from its work folder: neither forwarded nor kept.
    It now waits in --unsent (one error line with the series, the SEG, the cause and the
    traceback), goes to the archive at a later round once the peer answers properly, and arrives
    there byte for byte; the work folder keeps no copy."""
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    archive_port, relay_port = free_port(), free_port()
    unsent = tmp_path / "unsent"
    files = sorted(SERIES.glob("*.dcm"))
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    with _archive_open(archive_port, tmp_path / "received", wait_port):
        relay = PausingRelay(relay_port, archive_port, hold_at=None, change=_big_endian_accepted)
        try:
            with running_node(out=None, forward=Peer("127.0.0.1", relay_port, "ARCHIVE"), unsent=unsent,
                              resend_every=1.0) as node:
                assert _storescu(node.port, files).returncode == 0
                assert _wait_for(lambda: node.stats.not_forwarded), node.stats
                [waiting] = unsent.iterdir()
                assert waiting.name == f"{uid}.seg.dcm"
                kept = _data_set(waiting)
                assert _wait_for(lambda: not list(node.work.glob("*.seg.dcm")))
                relay.change = None  # the peer answers as it should from now on
                assert _wait_for(lambda: node.stats.forwarded), node.stats
        finally:
            relay.close()
    [received] = (tmp_path / "received").iterdir()
    assert _data_set(received) == kept
    assert list(unsent.iterdir()) == [] and not list(node.work.rglob("*.seg.dcm"))
    assert node.stats.segmented == [uid] and node.stats.failed == []
    assert node.stats.not_forwarded == node.stats.forwarded == [f"{uid}.seg.dcm"]
    first = _errors(caplog)[0]
    message = first.getMessage()
    assert uid in message and "SEG not forwarded: ValueError:" in message and str(waiting) in message
    assert first.exc_info is not None and first.exc_info[0] is ValueError


def test_a_seg_the_unsent_folder_cannot_take_stays_and_goes_once_it_can(running_node, tmp_path, free_port, wait_port,
                                                                       caplog):
    """The peer is down and the unsent folder cannot be made (a file holds its name): the SEG,
    not kept there, was removed from the work folder all the same. It now stays there, named in
    the error line, and once the folder can be written it waits there and goes to the peer."""
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    port = free_port()
    files, uid, unsent = _series_and_blocked_unsent(tmp_path)
    with running_node(out=None, forward=Peer("127.0.0.1", port, "ARCHIVE"), unsent=unsent, resend_every=1.0) as node:
        assert _storescu(node.port, files).returncode == 0
        assert _wait_for(lambda: node.stats.not_forwarded), node.stats
        seg = node.work / f"{uid}.seg.dcm"
        assert pydicom.dcmread(seg).ReferencedSeriesSequence[0].SeriesInstanceUID == uid
        made = _data_set(seg)
        [error] = _errors(caplog)
        assert error.exc_info is None and "\n" not in error.getMessage()
        assert f"could not be kept in {unsent}" in error.getMessage() and f"it stays in {seg}" in error.getMessage()
        unsent.unlink()
        with _archive_open(port, tmp_path / "received", wait_port):
            assert _wait_for(lambda: node.stats.forwarded), node.stats
    [received] = (tmp_path / "received").iterdir()
    assert _data_set(received) == made
    assert list(unsent.iterdir()) == [] and not list(node.work.rglob("*.seg.dcm"))
    assert node.stats.segmented == [uid] and node.stats.not_forwarded == node.stats.forwarded == [f"{uid}.seg.dcm"]


@pytest.mark.parametrize("work", ["made by the node", "--work"])
def test_a_stop_keeps_a_seg_kept_nowhere_else(running_node, tmp_path, free_port, wait_port, caplog, work):
    """A SEG neither forwarded nor kept in the unsent folder when the node stops: the work folder
    the node made was removed with it. Now the stop leaves it there (and only it), in one error
    line naming it; in a --work folder the next start keeps it in the unsent folder and sends it."""
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    port = free_port()
    files, uid, unsent = _series_and_blocked_unsent(tmp_path)
    options = dict(out=None, forward=Peer("127.0.0.1", port, "ARCHIVE"), unsent=unsent,
                   **({"work": None} if work == "made by the node" else {"work": tmp_path / "work", "durable": True}))
    with running_node(**options) as node:
        assert _storescu(node.port, files).returncode == 0
        assert _wait_for(lambda: node.stats.not_forwarded), node.stats
        seg = node.work / f"{uid}.seg.dcm"
        made = _data_set(seg)
    try:
        assert _data_set(seg) == made
        stop = _errors(caplog)[-1].getMessage()
        assert f"1 SEG(s) not forwarded to ARCHIVE@127.0.0.1:{port} could not be kept in {unsent}" in stop
        assert str(seg) in stop
        if work == "made by the node":
            assert list(node.work.iterdir()) == [seg]
            return
        unsent.unlink()
        with _archive_open(port, tmp_path / "received", wait_port), running_node(**options) as again:
            assert _wait_for(lambda: again.stats.forwarded), again.stats
        [received] = (tmp_path / "received").iterdir()
        assert _data_set(received) == made
        assert list(unsent.iterdir()) == [] and not seg.exists()
    finally:
        if work == "made by the node":
            shutil.rmtree(node.work, ignore_errors=True)
