"""SEGs a DICOM node left in its --work folder (no --out), against real nodes, dcmtk's storescu and
storescp and a real SIGKILL: a SEG of a series taken up again in flight is replaced by the SEG made
of it now (one SEG series per volume at the archive), links and FIFOs named as SEGs are never
followed or opened, a replacing SEG is named by its instance, and the next start sends a SEG left
there with or without --out. The oracle is how the series were made (tests/dicom_volume_series.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections import defaultdict

import pytest

from edgeseg.serve.dicom_node import Peer
from tests.dicom_volume_series import KINDS, make_series
from tests.serve.test_dicom_node import DCMTK, SERIES, _storescu, _wait_for
from tests.serve.test_dicom_node_durable import _listen, _node_folder, _stop
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture
from tests.serve.test_dicom_node_late_volumes import _sop, _two_each
from tests.serve.test_dicom_node_slow_series import _referenced
from tests.serve.test_dicom_node_unsent import _archive

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (storescu, storescp) is not installed: apt-get install dcmtk")

SEG = SERIES.parent / "liver.dcm"  # a DICOM SEG (dcmqi's example)


class _SilentPeer:
    """A peer that accepts TCP connections and never answers: a forwarding to it is held."""

    def __init__(self, port: int) -> None:
        self.port, self.held = port, []
        self._server = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.held.append(self._server.accept()[0])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        for connection in self.held:
            connection.close()


def test_a_node_killed_while_forwarding_leaves_one_seg_series_per_volume(serve_bundle, tmp_path, free_port,
                                                                         wait_port):
    """A node (no --out) writes the SEGs of a two-volume series into its work folder and is
    killed while the peer holds the first forwarding. The next start sent those SEGs as stranded
    AND segmented the series again into new SEG series: the archive got two SEG series per
    volume. Now each left SEG is the earlier SEG its volume's new one replaces: one SEG series
    per volume, whose latest instance references all of that volume's images; nothing is left."""
    volumes = make_series(tmp_path / "series", KINDS["stack"])
    uid = str(pydicom.dcmread(volumes[0][0]).SeriesInstanceUID)
    work, unsent, received = tmp_path / "work", tmp_path / "unsent", tmp_path / "received"
    silent, port = _SilentPeer(free_port()), free_port()
    node = _listen(serve_bundle, port, tmp_path, "--work", str(work), "--unsent", str(unsent), "--idle", "0.5",
                   "--forward", f"127.0.0.1:{silent.port}:ARCHIVE", out=None)
    try:
        wait_port(port, timeout=60)
        assert _storescu(port, [f for files in volumes for f in files]).returncode == 0
        assert _wait_for(lambda: len(list(work.glob("*.seg.dcm"))) == 2 and silent.held, 90)
    finally:
        node.kill()  # SIGKILL while the first SEG's forwarding is held
        node.communicate()
        silent.close()
    archive_port, port = free_port(), free_port()
    archive = _archive(archive_port, received)
    try:
        wait_port(archive_port)
        again = _listen(serve_bundle, port, tmp_path, "--work", str(work), "--unsent", str(unsent), "--idle", "0.5",
                        "--forward", f"127.0.0.1:{archive_port}:ARCHIVE", out=None)
        try:
            wait_port(port, timeout=60)
            assert _wait_for(lambda: (work / f"{uid}.segmented").is_dir(), 90)  # segmented, forwarded and kept
        finally:
            err = _stop(again)
    finally:
        archive.terminate()
        archive.wait(timeout=10)
    assert again.returncode == 0 and "Traceback" not in err, err
    series = defaultdict(list)
    for path in received.iterdir():
        series[str(pydicom.dcmread(path).SeriesInstanceUID)].append((int(pydicom.dcmread(path).InstanceNumber), path))
    assert len(series) == 2, {uid: sorted(n for n, _ in segs) for uid, segs in series.items()}
    latest = [max(segs)[1] for segs in series.values()]
    assert sorted(map(sorted, map(_referenced, latest))) == sorted(sorted(map(_sop, files)) for files in volumes)
    assert not list(work.glob("*.seg.dcm")) and not unsent.exists()  # all sent at once


def _unblock(fifo, done: threading.Event) -> None:
    """Until ``done``, open ``fifo`` for writing and close it again: a reader blocked opening it
    gets an empty file (a node opening it again each round can then be stopped)."""
    while not done.wait(0.2):
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_links_and_fifos_named_as_segs_are_never_opened(running_node, tmp_path, free_port, wait_port, caplog):
    """A FIFO and a link named ``*.seg.dcm`` in the work folder, the unsent folder not writable:
    the start-up rule sent the link's target (and removed the link) and opened the FIFO, blocking
    the segmenting worker for good. Both are now passed over in one warning line, left as they
    are, and the series received next is segmented and forwarded as usual."""
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    work, unsent = tmp_path / "work", tmp_path / "unsent"
    _node_folder(work)
    fifo, link, outside = work / "a.seg.dcm", work / "0.seg.dcm", tmp_path / "outside.seg.dcm"
    os.mkfifo(fifo)
    outside.write_bytes(SEG.read_bytes())
    link.symlink_to(outside)
    unsent.write_text("in the way")
    files = sorted(SERIES.glob("*.dcm"))
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    archive_port, done = free_port(), threading.Event()
    archive = _archive(archive_port, tmp_path / "received")
    try:
        wait_port(archive_port)
        with running_node(out=None, work=work, durable=True, unsent=unsent, resend_every=1.0,
                          forward=Peer("127.0.0.1", archive_port, "ARCHIVE")) as node:
            try:
                assert _storescu(node.port, files).returncode == 0
                assert _wait_for(lambda: f"{uid}.seg.dcm" in node.stats.forwarded, 60), node.stats
            finally:  # a worker blocked on the FIFO would hold up the stop for good
                threading.Thread(target=_unblock, args=(fifo, done), daemon=True).start()
    finally:
        done.set()
        archive.terminate()
        archive.wait(timeout=10)
    assert node.stats.forwarded == [f"{uid}.seg.dcm"]
    [received] = (tmp_path / "received").iterdir()
    assert _referenced(received) == {_sop(f) for f in files}
    assert link.is_symlink() and os.readlink(link) == str(outside) and fifo.is_fifo()
    [warning] = [r.getMessage() for r in caplog.records if "no regular file" in r.getMessage()]
    assert "0.seg.dcm" in warning and "a.seg.dcm" in warning


@pytest.mark.parametrize("volumes", [1, 2])
def test_a_replacing_seg_is_named_by_its_instance(running_node, tmp_path, free_port, volumes, caplog):
    """No --out, the peer down: the first SEGs go to the unsent folder, and the late images' SEGs,
    made in the work folder the first ones left, took their names again (``UID.vol1.seg.dcm``,
    logged as replacing ``UID.vol1.seg.dcm``), kept as ``UID.vol1~2.seg.dcm``. Each is now named
    by its instance, as the guide says: ``UID.vol1-2.seg.dcm`` (``UID-2.seg.dcm`` for one volume)."""
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    if volumes == 2:
        stacks = make_series(tmp_path / "series", KINDS["stack"])
        first, late = [*stacks[0][:2], *stacks[1][:2]], [stacks[0][2], stacks[1][2]]
    else:
        first, late = sorted(SERIES.glob("*.dcm"))[:2], sorted(SERIES.glob("*.dcm"))[2:]
    uid = str(pydicom.dcmread(first[0]).SeriesInstanceUID)
    unsent, kept = tmp_path / "unsent", tmp_path / "work" / f"{uid}.segmented"
    with running_node(out=None, unsent=unsent, forward=Peer("127.0.0.1", free_port(), "ARCHIVE")) as node:
        assert _storescu(node.port, first).returncode == 0
        assert _wait_for(lambda: len(node.stats.not_forwarded) == volumes and kept.is_dir(), 60), node.stats
        assert _storescu(node.port, late).returncode == 0
        assert _wait_for(lambda: len(node.stats.not_forwarded) == 2 * volumes and kept.is_dir(), 60), node.stats
    expected = _two_each(uid) if volumes == 2 else [f"{uid}-2.seg.dcm", f"{uid}.seg.dcm"]
    assert sorted(p.name for p in unsent.iterdir()) == expected
    assert node.stats.not_forwarded == sorted(expected, key=lambda name: "-2" in name)
    made = [r.getMessage() for r in caplog.records if "segmented ->" in r.getMessage() and ", replacing" in r.getMessage()]
    assert sorted(m.split("->")[1].split(",")[0].strip().rsplit("/", 1)[1] for m in made) == \
        [name for name in expected if "-2" in name]


@pytest.mark.parametrize("out", [None, "out"])
def test_a_seg_left_in_work_is_sent_whether_or_not_the_next_start_has_out(running_node, tmp_path, free_port,
                                                                           wait_port, out):
    """A SEG a stop left in --work (the unsent folder could not take it) was sent by the next
    start only if that start had no --out either, though the stop said the next start sends it."""
    work, received = tmp_path / "work", tmp_path / "received"
    _node_folder(work)
    left = work / "X.seg.dcm"
    left.write_bytes(SEG.read_bytes())
    archive_port = free_port()
    archive = _archive(archive_port, received)
    try:
        wait_port(archive_port)
        with running_node(out=None if out is None else tmp_path / out, work=work, durable=True,
                          unsent=tmp_path / "unsent", forward=Peer("127.0.0.1", archive_port, "ARCHIVE")) as node:
            assert _wait_for(lambda: node.stats.forwarded, 30), node.stats
    finally:
        archive.terminate()
        archive.wait(timeout=10)
    assert node.stats.forwarded == ["X.seg.dcm"] and not left.exists()
    [stored] = received.iterdir()
    assert pydicom.dcmread(stored).SOPInstanceUID == pydicom.dcmread(SEG).SOPInstanceUID
