"""The end of one forwarding: a release failing after the peer answered the C-STORE does not undo
its answer nor hide the C-STORE's own failure, and a resend round whose peer is away tries one
association, not one per list of SEGs."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading

import pytest

from edgeseg.serve.dicom_forward import Forwarder, Peer, UnsentFolder, send_seg
from edgeseg.serve.dicom_node_settings import NodeStats
from tests.serve.dicom_relay import PausingRelay
from tests.serve.test_dicom_forward_status import SEG, archive  # noqa: F401 - archive: the fixture
from tests.serve.test_dicom_node import DCMTK
from tests.serve.test_dicom_node_unsent import _archive, _big_endian_accepted

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")


@pytest.fixture
def failing_release(monkeypatch):
    """pynetdicom's release does its work, then raises (an injected fault: no real peer makes it)."""
    release = pynetdicom.association.Association.release

    def failing(self):
        release(self)
        raise RuntimeError("the release failed")

    monkeypatch.setattr(pynetdicom.association.Association, "release", failing)


def test_a_release_failing_after_success_does_not_undo_the_store(archive, tmp_path, failing_release, caplog):  # noqa: F811
    """The release ran in a ``finally``: its error was raised although the peer had stored the
    SEG, which then waited in the unsent folder and was stored again. Now the answer stands and
    the release's failure is one warning line."""
    peer, seen = archive(0x0000)
    send_seg(peer, "EDGESEG", SEG)
    assert [uid for _, _, uid in seen] == [pydicom.dcmread(SEG).SOPInstanceUID]
    assert any("the release failed" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@pytest.mark.skipif(not DCMTK, reason="dcmtk (storescp) is not installed")
def test_a_release_failing_after_a_failed_store_does_not_hide_its_cause(tmp_path, free_port, wait_port,
                                                                          failing_release):
    """The peer accepts a transfer syntax never proposed (pynetdicom's ValueError in the C-STORE),
    and the release fails after it: the release's error hid the C-STORE's. The C-STORE's is raised."""
    archive_port, relay_port = free_port(), free_port()
    archive = _archive(archive_port, tmp_path / "received")
    relay = PausingRelay(relay_port, archive_port, hold_at=None, change=_big_endian_accepted)
    try:
        wait_port(archive_port)
        with pytest.raises(ValueError):
            send_seg(Peer("127.0.0.1", relay_port, "ARCHIVE"), "EDGESEG", SEG)
    finally:
        relay.close()
        archive.terminate()
        archive.wait(timeout=10)


class _ClosingPeer:
    """Accepts each TCP connection and closes it at once (a peer away), counting them."""

    def __init__(self, port: int) -> None:
        self.port, self.accepted = port, 0
        self._server = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection = self._server.accept()[0]
                self.accepted += 1  # before the close the node sees
                connection.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()


def test_a_round_with_the_peer_away_tries_one_association(tmp_path, free_port, monkeypatch):
    """A SEG stranded (the unsent folder full: an injected ENOSPC, as a full disk gives) and one
    waiting in the unsent folder, the peer away: the round tried the stranded SEGs, then the
    unsent folder, two associations, though a round ends at the first failure."""
    unsent = UnsentFolder(tmp_path / "unsent")
    unsent.folder.mkdir()
    (unsent.folder / "waiting.seg.dcm").write_bytes(SEG.read_bytes())
    stranded = tmp_path / "stranded.seg.dcm"
    stranded.write_bytes(SEG.read_bytes())

    def full(self, seg):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(UnsentFolder, "keep", full)
    peer = _ClosingPeer(free_port())
    try:
        forwarder = Forwarder(Peer("127.0.0.1", peer.port, "ARCHIVE"), "EDGESEG", unsent, 60, NodeStats(),
                              [(stranded, True)])
        forwarder.resend()
    finally:
        peer.close()
    assert peer.accepted == 1
    assert forwarder.stranded == [(stranded, True)] and stranded.exists()
    assert [p.name for p in unsent.pending()] == ["waiting.seg.dcm"]
