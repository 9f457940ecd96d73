"""The DICOM node receiving Enhanced CT files past one image's size: the whole series comes in
one message, and as one image.

An ordinary uncompressed Enhanced CT of 300 frames of 512x512 (157 MB) had its association
aborted: the bound on one message's data set was sized for one slice (138,412,032 bytes by
default). A multi-frame CT is now bounded by the volume limit. A small compressed one (RLE, 8 MB
for 1,000 zero frames of 512x512) was decoded whole as it arrived and kept decoded: the node
grew by 1.5 GiB for it. Its frames are now decoded and checked one at a time.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import pytest

from tests.enhanced_ct import large_enhanced_ct, read_slices
from tests.serve.test_dicom_node import DCMTK, SERIES, _wait_for
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")

SIZE = 512
RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def _big_enhanced_ct(frames: int):
    """An Enhanced CT header of ``frames`` frames of SIZE x SIZE, built from tiny slices (its pixel
    data is set by the caller): each slice the first test slice moved along the normal."""
    return large_enhanced_ct(read_slices(SERIES)[0], frames, SIZE)


def _rle_zero_frame() -> bytes:
    """One RLE Lossless frame (PS3.5 G) of SIZE x SIZE zero 16-bit pixels: two segments (high and
    low bytes), each runs of 128 zeros."""
    segment = bytes([0x81, 0]) * (SIZE * SIZE // 128)
    header = (2).to_bytes(4, "little") + (64).to_bytes(4, "little") + (64 + len(segment)).to_bytes(4, "little")
    return header.ljust(64, b"\0") + segment * 2


def _storescu(port: int, path: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-v", *options, "-aec", "EDGESEG", "127.0.0.1", str(port), str(path)],
                          capture_output=True, text=True, timeout=300)


def test_an_uncompressed_enhanced_ct_over_the_one_image_bound_is_stored(running_node, tmp_path, monkeypatch):
    """An uncompressed Enhanced CT over the one-image bound and far under the volume limit is
    acknowledged and stored whole (310 frames of 512x512, 162 MB, had the association aborted: "a
    data set of over 138412032 bytes"). The pixel limit is lowered to one 512x512 slice, so the
    bound is 6 MiB and 30 frames (15.7 MB) are past it: the same case, at a tenth of the memory."""
    from edgeseg.limits import current_limits
    from edgeseg.serve.dicom_peer_bound import data_set_limit

    monkeypatch.setenv("EDGESEG_MAX_PIXELS", str(SIZE * SIZE))
    frames = 30
    ds = _big_enhanced_ct(frames)
    ds.PixelData = bytes(frames * SIZE * SIZE * 2)
    source = tmp_path / "e.dcm"
    ds.save_as(source, enforce_file_format=True)
    assert source.stat().st_size > 2 * data_set_limit(current_limits())
    with running_node(idle=3600) as node:
        sent = _storescu(node.port, source)
        stored = list(node.work.rglob("*.dcm"))
        held = [(pydicom.dcmread(path, stop_before_pixels=True), path.stat().st_size) for path in stored]
        node.abandon()  # the test is the storing; the stop segments nothing
    assert sent.returncode == 0 and "Received Store Response (Success)" in sent.stderr, sent.stderr[-2000:]
    assert [path.name for path in stored] == [f"{ds.SOPInstanceUID}.dcm"]
    [(header, size)] = held
    assert int(header.NumberOfFrames) == frames and size >= frames * SIZE * SIZE * 2


def test_an_enhanced_ct_past_the_volume_limit_is_aborted_as_it_comes(running_node, tmp_path, monkeypatch, caplog):
    """The multi-frame bound is the volume limit's: lowered to 8 MiB, 40 frames of 512x512 (21 MB
    as sent) have their association aborted once past 8 MiB + 4 MiB, nothing stored."""
    import logging

    ds = _big_enhanced_ct(40)
    ds.PixelData = bytes(40 * SIZE * SIZE * 2)
    source = tmp_path / "e.dcm"
    ds.save_as(source, enforce_file_format=True)
    monkeypatch.setenv("EDGESEG_MAX_VOLUME_BYTES", str(8 << 20))
    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    with running_node(idle=3600) as node:
        sent = _storescu(node.port, source)
        stored = list(node.work.rglob("*.dcm"))
    assert "Received Store Response" not in sent.stderr, sent.stderr[-2000:]
    assert stored == [] and node.stats.received == 0
    assert f"a data set of over {(8 << 20) + (4 << 20)} bytes" in caplog.text, caplog.text


def _status_kib(pid: int, field: str) -> int:
    """``field`` (VmRSS, the resident set now; VmHWM, its peak) of process ``pid``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@contextlib.contextmanager
def listen_peak_reset(serve_bundle, tmp_path: Path, free_port, wait_port):
    """``edgeseg listen --idle 3600`` (nothing segmented meanwhile) with TMPDIR tmp_path, its peak
    resident memory reset (/proc/PID/clear_refs) once its model is loaded: a peak of the load
    higher than the storing's would hide any growth. Yields (port, pid, VmRSS then in KiB); the
    process is killed at the end (the tests are the storing: segmenting is not)."""
    from tests.serve.test_dicom_node_hostile import start_listen

    port = free_port()
    proc = start_listen(serve_bundle, port, tmp_path, "--idle", "3600")
    try:
        wait_port(port, timeout=60)
        time.sleep(1)
        before = _status_kib(proc.pid, "VmRSS")
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM from now on
        yield port, proc.pid, before
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads VmRSS and VmHWM from /proc")
def test_a_compressed_enhanced_ct_is_checked_frame_by_frame(serve_bundle, tmp_path, free_port, wait_port):
    """1,000 zero RLE frames of 512x512 (8 MB as sent, 500 MB decoded) sent to ``edgeseg listen``:
    acknowledged, stored as sent, and the node's peak resident memory while it takes them grows
    by well under the decoded size (it grew by 1.5 GiB: every frame decoded at once and kept).
    The peak is reset (/proc/PID/clear_refs) once the model is loaded: a peak of the load
    higher than the storing's would hide any growth."""
    from pydicom.encaps import encapsulate

    frames = 1000
    ds = _big_enhanced_ct(frames)
    ds.file_meta.TransferSyntaxUID = RLE_LOSSLESS
    ds.PixelData = encapsulate([_rle_zero_frame()] * frames)
    ds["PixelData"].is_undefined_length = True
    source = tmp_path / "rle.dcm"
    ds.save_as(source, enforce_file_format=True)
    decoded_kib = frames * SIZE * SIZE * 2 // 1024
    with listen_peak_reset(serve_bundle, tmp_path, free_port, wait_port) as (port, pid, before):
        sent = _storescu(port, source, "-xr")
        after = _status_kib(pid, "VmHWM")
        assert _wait_for(lambda: list(tmp_path.glob("edgeseg-listen-*/*/*.dcm")), 10)
        [stored] = tmp_path.glob("edgeseg-listen-*/*/*.dcm")
        syntax = pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert sent.returncode == 0 and "Received Store Response (Success)" in sent.stderr, sent.stderr[-2000:]
    assert after - before < decoded_kib // 4, (before, after, decoded_kib)
    assert syntax == RLE_LOSSLESS
