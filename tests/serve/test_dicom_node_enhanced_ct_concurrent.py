"""The DICOM node receiving large Enhanced CT files from several peers at once.

pynetdicom gathered each C-STORE's data set in memory until its last fragment, and the handler
decoded it whole: K associations each sending an uncompressed Enhanced CT held K copies of it and
more (four senders of 31 MB took the ``edgeseg listen`` process up by several times one file).
The node now has pynetdicom write each data set to a file as it arrives, checks it from there
frame by frame, and stores it by a hard link (edgeseg/serve/dicom_received.py).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.serve.test_dicom_node import DCMTK
from tests.enhanced_ct import series_copies
from tests.serve.test_dicom_node_enhanced_ct_size import SIZE, _big_enhanced_ct, _status_kib, listen_peak_reset
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")

SENDERS, FRAMES = 4, 60


def _enhanced_ct_files(folder: Path, count: int, frames: int) -> list[Path]:
    """``count`` uncompressed Enhanced CT files of ``frames`` frames of SIZE x SIZE, each its own
    series, each frame's pixels its frame number (the stored files are compared with them)."""
    import numpy as np

    ds = _big_enhanced_ct(frames)
    ds.PixelData = (np.arange(frames, dtype=np.int16)[:, None, None] * np.ones((SIZE, SIZE), np.int16)).tobytes()
    return series_copies(ds, folder, count)


def _send_all(port: int, paths: list[Path]) -> list[str]:
    """Send each file with its own ``storescu``, all at once; what each wrote to stderr."""
    senders = [subprocess.Popen(["storescu", "-v", "-aec", "EDGESEG", "127.0.0.1", str(port), str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for path in paths]
    return [sender.communicate(timeout=300)[1] for sender in senders]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads VmRSS and VmHWM from /proc")
def test_concurrent_enhanced_ct_senders_take_less_than_one_file_of_memory(serve_bundle, tmp_path, free_port, wait_port):
    """Four storescu peers each send an uncompressed Enhanced CT of 60 frames of 512x512 (31 MB)
    at once to ``edgeseg listen``: all are acknowledged and stored whole, and the node's peak
    resident memory while they arrive grows by less than one of the files (it grew by several:
    every data set gathered in memory, then decoded). The peak is reset once the model is loaded."""
    sent = tmp_path / "sent"
    sent.mkdir()
    paths = _enhanced_ct_files(sent, SENDERS, FRAMES)
    size_kib = paths[0].stat().st_size // 1024
    with listen_peak_reset(serve_bundle, tmp_path, free_port, wait_port) as (port, pid, before):
        answers = _send_all(port, paths)
        peak = _status_kib(pid, "VmHWM")
        stored = {path.name: path for path in tmp_path.glob("edgeseg-listen-*/*/*.dcm")}
        kept = {name: pydicom.dcmread(path) for name, path in stored.items()}
    assert all("Received Store Response (Success)" in answer for answer in answers), [a[-800:] for a in answers]
    for path in paths:
        source = pydicom.dcmread(path)
        copy = kept[f"{source.SOPInstanceUID}.dcm"]
        assert copy.SeriesInstanceUID == source.SeriesInstanceUID and copy.PixelData == source.PixelData
    assert len(stored) == SENDERS
    assert peak - before < size_kib, (before, peak, size_kib)
    assert [p.name for p in tmp_path.rglob("tmp*.dcm")] == []  # no received file left, in TMPDIR or work


def test_a_data_set_cut_off_leaves_no_file_behind(serve_bundle, tmp_path, free_port, wait_port, monkeypatch):
    """An Enhanced CT past the volume limit has its association aborted as it comes (the node's
    bound on one message): the part received, written to a file as it came, is removed
    with the connection, and the node still takes the next peer's image."""
    from tests.serve.test_dicom_node_hostile import start_listen, stop_listen

    for name in ("big", "small"):
        (tmp_path / name).mkdir()
    [big] = _enhanced_ct_files(tmp_path / "big", 1, 40)  # 21 MB, over 8 MiB + 4 MiB
    [small] = _enhanced_ct_files(tmp_path / "small", 1, 4)
    port = free_port()
    monkeypatch.setenv("EDGESEG_MAX_VOLUME_BYTES", str(8 << 20))  # the node's, inherited
    proc = start_listen(serve_bundle, port, tmp_path, "--idle", "3600")
    try:
        wait_port(port, timeout=60)
        [cut] = _send_all(port, [big])
        deadline = time.monotonic() + 10
        while list(tmp_path.rglob("tmp*.dcm")) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p.name for p in tmp_path.rglob("tmp*.dcm")]
        [taken] = _send_all(port, [small])
    finally:
        err = stop_listen(proc)
    assert "Received Store Response" not in cut, cut[-2000:]
    assert f"a data set of over {(8 << 20) + (4 << 20)} bytes" in err, err[-2000:]
    assert left == []
    assert "Received Store Response (Success)" in taken, taken[-2000:]


@pytest.mark.parametrize("chunked", [False, True])
def test_another_pynetdicom_scp_in_the_process_receives_as_before(running_node, tmp_path, free_port, wait_port,
                                                                 monkeypatch, chunked):
    """pynetdicom's setting is for the whole process: while a node runs and receives an Enhanced
    CT to a file, a pynetdicom SCP of the program's own beside it still gets its Enhanced CT as
    the program set it: in memory (``event.request.DataSet``; no ``dataset_path``) by default, to
    a file of its own where the program set STORE_RECV_CHUNKED_DATASET; and once the node stops
    the setting is what it was."""
    from pynetdicom import AE, _config, evt

    from edgeseg.serve.dicom_intake import ENHANCED_CT_CLASSES

    (tmp_path / "sent").mkdir()
    [path] = _enhanced_ct_files(tmp_path / "sent", 1, 4)
    seen = []

    def on_store(event):
        seen.append((event.dataset_path, event.request.DataSet and event.request.DataSet.getbuffer().nbytes))
        return 0x0000

    own = AE(ae_title="EDGESEG")
    own.add_supported_context(ENHANCED_CT_CLASSES[0])
    port = free_port()
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", chunked)
    before = _config.STORE_RECV_CHUNKED_DATASET
    with running_node(idle=3600) as node:
        server = own.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            wait_port(port)
            to_node, to_own = _send_all(node.port, [path]), _send_all(port, [path])
        finally:
            server.shutdown()
        stored = list(node.work.rglob("*.dcm"))
        node.abandon()
    assert all("Received Store Response (Success)" in answer for answer in to_node + to_own), to_node + to_own
    assert [p.name for p in stored] == [f"{pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID}.dcm"]
    [(dataset_path, in_memory)] = seen
    if chunked:
        assert dataset_path is not None and not Path(dataset_path).is_relative_to(node.work)
    else:
        assert dataset_path is None and in_memory > 4 * SIZE * SIZE * 2
    assert _config.STORE_RECV_CHUNKED_DATASET is before is chunked


@pytest.mark.skipif(not Path("/dev/shm").is_dir() or Path("/dev/shm").stat().st_dev == Path(__file__).stat().st_dev,
                    reason="needs /dev/shm on a file system of its own")
def test_an_enhanced_ct_is_received_on_the_work_folders_file_system(serve_bundle, tmp_path, free_port, wait_port):
    """``--work`` on another file system than TMPDIR: the data set was received in TMPDIR and
    copied into the work folder; it is now received in the work folder itself (linked in, never
    in TMPDIR), acknowledged, the stored file whole, nothing left in TMPDIR or work/received."""
    import os
    import shutil
    import sys
    import tempfile

    from tests.serve.test_dicom_node_hostile import stop_listen

    (tmp_path / "sent").mkdir()
    [path] = _enhanced_ct_files(tmp_path / "sent", 1, 8)
    received = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="edgeseg-test-"))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "listen", str(serve_bundle), "--port", str(port),
                             "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--idle", "3600",
                             "--backend", "onnxruntime:fp32"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, TMPDIR=str(received)))
    try:
        wait_port(port, timeout=60)
        [answer] = _send_all(port, [path])
        stored = list((tmp_path / "work").glob("*/*.dcm"))
        copy = pydicom.dcmread(stored[0]) if len(stored) == 1 else None
        left = sorted(p.name for p in received.iterdir()) + sorted(p.name for p in (tmp_path / "work" / "received").iterdir())
    finally:
        proc.kill()
        proc.communicate()
        shutil.rmtree(received, ignore_errors=True)
    assert "Received Store Response (Success)" in answer, answer[-2000:]
    assert copy is not None and copy.PixelData == pydicom.dcmread(path).PixelData, stored
    assert left == []


def _deflate_bomb(path: Path, frames: int) -> int:
    """Write to ``path`` an Enhanced CT file in Deflated Explicit VR Little Endian whose ``frames``
    zero frames of SIZE x SIZE inflate to ``frames`` x 512 KiB, deflated to well under 1 MB, made
    without holding the inflated data; its inflated size."""
    import zlib
    from io import BytesIO

    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    from pynetdicom.dsutils import encode

    ds = _big_enhanced_ct(frames)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = BytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    header = encode(ds, False, True)  # explicit VR little endian, as it is inflated
    pixel_bytes = frames * SIZE * SIZE * 2
    pixel_element = (0x7FE0).to_bytes(2, "little") + (0x0010).to_bytes(2, "little") + b"OW\0\0"
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM" + meta.getvalue())
        out.write(deflate.compress(header + pixel_element + pixel_bytes.to_bytes(4, "little")))
        for _ in range(pixel_bytes // len(zeros)):
            out.write(deflate.compress(zeros))
        out.write(deflate.flush())
    return len(header) + 12 + pixel_bytes


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads VmRSS and VmHWM from /proc")
def test_a_deflate_bomb_is_refused_without_inflating_it(serve_bundle, tmp_path, free_port, wait_port):
    """An Enhanced CT in Deflated Explicit VR Little Endian, under 1 MB as sent and 256 MiB
    inflated: the size checks saw the deflated size, and pydicom inflated it whole in memory to
    read it (the node grew by its inflated size; one of gigabytes was unbounded). The node now
    accepts no CT in that syntax: the context is rejected, and its memory does not grow."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    from pynetdicom import AE

    bomb = tmp_path / "bomb.dcm"
    inflated_kib = _deflate_bomb(bomb, 512) // 1024
    assert bomb.stat().st_size < 1 << 20
    peer = AE()
    peer.add_requested_context(pydicom.dcmread(bomb, stop_before_pixels=True).SOPClassUID,
                               DeflatedExplicitVRLittleEndian)
    with listen_peak_reset(serve_bundle, tmp_path, free_port, wait_port) as (port, pid, before):
        assoc = peer.associate("127.0.0.1", port, ae_title="EDGESEG")
        try:
            accepted = [cx for cx in assoc.accepted_contexts if cx.transfer_syntax[0] == DeflatedExplicitVRLittleEndian]
            if accepted:
                assoc.send_c_store(bomb)
        finally:
            assoc.release()
        peak = _status_kib(pid, "VmHWM")
    assert peak - before < inflated_kib // 4, (before, peak, inflated_kib)
    assert accepted == []


@pytest.mark.parametrize("where", ["before-pixels", "after-pixels"])
def test_an_enhanced_ct_whose_header_is_padded_is_refused(running_node, tmp_path, where):
    """Received to a file, an Enhanced CT's elements other than pixel data are still counted:
    5 MiB of them in a private element, before its pixel data or after it, are refused with 0xA700 and nothing is stored; the same file without them is taken."""
    import numpy as np

    ds = _big_enhanced_ct(4)
    ds.PixelData = np.ones((4, SIZE, SIZE), np.int16).tobytes()
    plain = tmp_path / "plain.dcm"
    ds.save_as(plain, enforce_file_format=True)
    group = 0x0009 if where == "before-pixels" else 0x7FE1  # a private group after Pixel Data (7FE0,0010)
    ds.private_block(group, "EDGESEG TEST", create=True).add_new(0x10, "OB", bytes(5 << 20))
    padded = tmp_path / "padded.dcm"
    ds.save_as(padded, enforce_file_format=True)
    with running_node(idle=3600) as node:
        [refused] = _send_all(node.port, [padded])
        none = list(node.work.rglob("*.dcm"))
        [taken] = _send_all(node.port, [plain])
        node.abandon()
    assert "Refused: OutOfResources" in refused, refused[-2000:]
    assert none == [] and "Received Store Response (Success)" in taken, taken[-2000:]


def test_a_compressed_enhanced_ct_padded_after_its_pixels_is_refused(running_node, tmp_path):
    """Encapsulated pixel data is counted item by item up to its sequence delimiter: 5 MiB in a
    private element after it are refused with 0xA700, as after native pixels, and nothing is
    stored; the same RLE file without them is taken. 200 frames: pixel data over DEFER_BYTES,
    left in the received file and walked there."""
    from pydicom.encaps import encapsulate

    from tests.serve.test_dicom_node_enhanced_ct_size import RLE_LOSSLESS, _rle_zero_frame

    ds = _big_enhanced_ct(200)
    ds.file_meta.TransferSyntaxUID = RLE_LOSSLESS
    ds.PixelData = encapsulate([_rle_zero_frame()] * 200)
    ds["PixelData"].is_undefined_length = True
    plain = tmp_path / "plain.dcm"
    ds.save_as(plain, enforce_file_format=True)
    ds.private_block(0x7FE1, "EDGESEG TEST", create=True).add_new(0x10, "OB", bytes(5 << 20))
    padded = tmp_path / "padded.dcm"
    ds.save_as(padded, enforce_file_format=True)

    def send(path):
        return subprocess.run(["storescu", "-v", "-xr", "-aec", "EDGESEG", "127.0.0.1", str(node.port), str(path)],
                              capture_output=True, text=True, timeout=300).stderr

    with running_node(idle=3600) as node:
        refused = send(padded)
        none = list(node.work.rglob("*.dcm"))
        taken = send(plain)
        node.abandon()
    assert "Refused: OutOfResources" in refused, refused[-2000:]
    assert none == [] and "Received Store Response (Success)" in taken, taken[-2000:]
