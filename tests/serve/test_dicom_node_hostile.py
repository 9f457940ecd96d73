"""The DICOM node against peers that send more than it reads: a PDU header claiming 2 GiB (raw
sockets, before and after the association is set up), an image padded with a large private
element (dcmtk's storescu), a series whose files outgrow the volume limit in bytes; and images
lacking what the series reader needs, refused as they arrive instead of failing the series."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
import signal
import socket
import struct
import subprocess
import sys

import pytest

from tests.serve.test_dicom_node import DCMTK, SERIES, _storescu, _wait_for
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture
from tests.serve.test_dicom_node_peers import _copy_series

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")

CLAIMED = 2 << 30  # what the crafted PDU header says its body holds
FLOOD = 256 << 20  # what the peer actually sends of it


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _associate_rq(called: str = "EDGESEG", calling: str = "HOSTILE") -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing Verification in Implicit VR Little Endian."""
    context = _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, b"1.2.840.10008.1.1") + _item(0x40, b"1.2.840.10008.1.2"))
    user = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4"))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _recv_pdu(sock: socket.socket) -> bytes:
    header = b""
    while len(header) < 6:
        part = sock.recv(6 - len(header))
        if not part:
            return header
        header += part
    body = b""
    while len(body) < struct.unpack(">I", header[2:6])[0]:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return header + body


def _command_fragments() -> bytes:
    """About 1 MiB of P-DATA-TF PDUs, each as long as the node offered (16382), each one
    fragment of a command set that never ends (message control header 0x01: command, not last)."""
    pdv = struct.pack(">IBB", 16382 - 4, 1, 0x01) + bytes(16382 - 6)
    return (struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv) * 64


def start_listen(bundle, port: int, work: Path, *options: str) -> subprocess.Popen:
    """``edgeseg listen`` as a process on 127.0.0.1:``port``, writing to ``work/out`` and taking
    its work folder in ``work`` (TMPDIR), so a test can see that it leaves none behind."""
    return subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "listen", str(bundle), "--port", str(port),
                             "--out", str(work / "out"), "--backend", "onnxruntime:fp32", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(work)))



def stop_listen(proc: subprocess.Popen) -> str:
    """Stop ``proc`` (start_listen's) as a service manager does, with SIGTERM, and return what it
    wrote to stderr; killed if it has not stopped within 60 s."""
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

def _flood(sock: socket.socket, first: bytes, chunk: bytes = bytes(1 << 20)) -> bytes:
    """Send ``first`` and then ``chunk`` again and again, up to FLOOD bytes, until the node stops
    taking them; close the sending side and return what the node sent until it closed the
    connection."""
    sock.sendall(first)
    with contextlib.suppress(OSError):  # the node closed the connection: the rest is not sent
        for _ in range(FLOOD // len(chunk)):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
    answer = b""
    with contextlib.suppress(OSError):
        while part := sock.recv(65536):
            answer += part
    return answer


def _high_water_mark(pid: int) -> int:
    """The most resident memory the process has held (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux) to read the node's memory")
@pytest.mark.parametrize("when", ["association request", "established association", "command set"])
def test_a_pdu_claiming_2_gib_is_aborted_before_its_body_is_read(serve_bundle, tmp_path, free_port, wait_port, when):
    """pynetdicom read a PDU whole at the length its header claims: a peer sending a header of 2 GiB
    and then data made the node hold all it sent (here 256 MiB), as the very first PDU too, before
    any AE title was checked. The node now aborts the association on the header: its memory high
    water mark grows by a small fraction of what the peer sent, and it goes on answering. So for
    PDUs of the length offered that add up to a command set without end ("command set")."""
    port = free_port()
    proc = start_listen(serve_bundle, port, tmp_path)
    try:
        wait_port(port, timeout=60)
        echo = ["echoscu", "-aec", "EDGESEG", "127.0.0.1", str(port)]
        assert subprocess.run(echo, capture_output=True, timeout=30).returncode == 0  # associations warmed up
        before = _high_water_mark(proc.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            if when != "association request":
                sock.sendall(_associate_rq())
                assert _recv_pdu(sock)[:1] == b"\x02"  # A-ASSOCIATE-AC
            if when == "command set":
                answer = _flood(sock, b"", _command_fragments())
            else:
                answer = _flood(sock, struct.pack(">BBI", 0x01 if when == "association request" else 0x04, 0, CLAIMED))
        grown = _high_water_mark(proc.pid) - before
        served = subprocess.run(echo, capture_output=True, text=True, timeout=30)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert grown < FLOOD // 8, f"the node's memory grew by {grown} bytes"
    assert answer[:1] == b"\x07"  # A-ABORT
    assert served.returncode == 0, served.stderr
    assert proc.returncode == 0 and "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if "aborted the association" in line]
    assert ("a command set of over 65536 bytes" if when == "command set" else f"of {CLAIMED} bytes, over the") in line


def _padded(size: int):
    """A change for _copy_series: a private element of ``size`` bytes in each image."""
    def change(ds):
        block = ds.private_block(0x0011, "EDGESEG TEST", create=True)
        block.add_new(0x01, "OB", bytes(size))
    return change


def test_an_image_padded_past_the_data_set_bound_aborts_the_association(running_node, tmp_path, monkeypatch):
    """A C-STORE data set is gathered in memory before the node's handler sees it: an image padded
    with a private element was held whole and stored. With 512 x 512 pixels the most a slice may
    have, one image's data set may take 512 x 512 x 8 bytes and 4 MiB more; an image padded with
    8 MiB aborts the association once its data set passes that, nothing is stored, and an
    ordinary series sent next is received and segmented."""
    monkeypatch.setenv("EDGESEG_MAX_PIXELS", str(512 * 512))
    padded = _copy_series(tmp_path / "padded", _padded(8 << 20))
    with running_node() as node:
        sent = _storescu(node.port, padded[:1])
        stored = list(node.work.rglob("*.dcm"))
        ordinary = _storescu(node.port, sorted(SERIES.glob("*.dcm")))
        assert _wait_for(lambda: node.stats.segmented), node.stats
    assert sent.returncode != 0 and "Success" not in sent.stderr, sent.stderr
    assert stored == [] and node.stats.aborted_associations == 1
    assert ordinary.returncode == 0, ordinary.stderr
    assert node.stats.received == 3 and node.stats.segmented == [pydicom.dcmread(SERIES / "01.dcm").SeriesInstanceUID]


def test_an_image_whose_header_is_padded_is_refused(running_node, tmp_path):
    """Within the data set bound (the default limits allow 128 MiB of pixels), an image whose
    elements other than pixel data take more than 4 MiB is refused with 0xA700 and not stored."""
    padded = _copy_series(tmp_path / "padded", _padded(5 << 20))
    with running_node() as node:
        sent = _storescu(node.port, padded[:1])
        stored = list(node.work.rglob("*.dcm"))
    assert sent.stderr.count("Refused: OutOfResources") == 1, sent.stderr
    assert stored == [] and node.stats.received == 0 and node.stats.refused == 1


def test_a_series_is_bounded_in_bytes_on_disk(running_node, tmp_path, monkeypatch):
    """The volume limit counted pixels only: with room for three 512 x 512 slices (as float32 HU),
    three images padded with 1 MiB each were stored, 4.5 MiB on disk. The series' files now count
    in bytes too: the second image is refused with 0xA700 and the disk holds no more than the limit."""
    limit = 3 * 512 * 512 * 4
    monkeypatch.setenv("EDGESEG_MAX_VOLUME_BYTES", str(limit))
    padded = _copy_series(tmp_path / "padded", _padded(1 << 20))
    with running_node(idle=60) as node:
        sent = _storescu(node.port, padded)
        held = sum(path.stat().st_size for path in node.work.rglob("*.dcm"))
    assert sent.stderr.count("Refused: OutOfResources") == 1, sent.stderr
    assert node.stats.received == 1 and 0 < held <= limit


def _without(tag: str):
    def change(ds):
        delattr(ds, tag)
    return change


@pytest.mark.parametrize("change, named", [
    (_without("ImagePositionPatient"), "lacks ImagePositionPatient"),
    (_without("ImageOrientationPatient"), "lacks ImageOrientationPatient"),
    (_without("PixelSpacing"), "lacks PixelSpacing"),
    (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.5, 0]), "ImageOrientationPatient"),
], ids=["position", "orientation", "spacing", "orientation-not-unit"])
def test_an_image_the_reader_would_refuse_is_refused_as_it_arrives(running_node, tmp_path, change, named):
    """An image lacking ImagePositionPatient (or another tag the series reader needs) was
    acknowledged with Success, and then the whole series failed when it was read. That image
    alone is now refused with 0xA900, its error comment naming the tag; the others of its series
    are taken, but the series is not segmented without it (a SEG of part of the series): it fails,
    naming the refusal."""
    files = _copy_series(tmp_path / "series")
    spoilt = pydicom.dcmread(files[-1])
    change(spoilt)
    spoilt.save_as(files[-1])
    with running_node() as node:
        sent = subprocess.run(["storescu", "-d", "-aec", "EDGESEG", "127.0.0.1", str(node.port), *map(str, files)],
                              capture_output=True, text=True, timeout=60)
        assert _wait_for(lambda: node.stats.segmented or node.stats.failed), node.stats
    statuses = [line.split(":", 2)[2].strip() for line in sent.stderr.splitlines() if "DIMSE Status" in line]
    assert statuses.count("0x0000: Success") == 2 and statuses[-1].startswith("0xa900"), statuses
    [comment] = [line for line in sent.stderr.splitlines() if "(0000,0902)" in line]
    assert named in comment
    assert node.stats.received == 2 and node.stats.segmented == [] and len(node.stats.failed) == 1
    assert not list((tmp_path / "out").glob("*.seg.dcm"))


def test_sigterm_while_the_node_starts_is_a_stop_with_exit_status_0(serve_bundle, tmp_path, free_port, wait_port):
    """A service manager's stop that lands after the node has bound its port but before it waits
    (here: while its start-up line is blocked on a full stdout pipe) is the graceful stop, exit 0,
    no traceback and no work folder left; it was 'interrupted', exit 130."""
    import fcntl
    import threading
    import time

    port = free_port()
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETFL, fcntl.fcntl(write_end, fcntl.F_GETFL) | os.O_NONBLOCK)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)  # fill the pipe: the node's start-up line cannot be written
    fcntl.fcntl(write_end, fcntl.F_SETFL, fcntl.fcntl(write_end, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "listen", str(serve_bundle), "--port", str(port),
                             "--out", str(tmp_path / "out"), "--backend", "onnxruntime:fp32"],
                            stdout=write_end, stderr=subprocess.PIPE, text=True, env=dict(os.environ, TMPDIR=str(tmp_path)))
    os.close(write_end)
    try:
        wait_port(port, timeout=60)  # started; its start-up line is waiting on the pipe
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)  # the signal lands in the blocked write; then the pipe is read, so that the exit's flush ends
        drain = threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(read_end, 65536), b"")], daemon=True)
        drain.start()
        err = proc.communicate(timeout=60)[1]
        drain.join(10)
    finally:
        os.close(read_end)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (proc.returncode, err)
    assert "Traceback" not in err and "interrupted" not in err, err
    assert not list(tmp_path.glob("edgeseg-listen-*")), "the work folder was left behind"
