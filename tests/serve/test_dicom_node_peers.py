"""The DICOM node as a PACS engineer sees it next to a scanner: the bound on series in flight,
SEGs the forward peer did not take kept and sent again, and images refused as they arrive when
they could only fail later (not decodable here, not CT). dcmtk's storescu and storescp are the
peers."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import pytest

from edgeseg.serve.dicom_node import DicomNode, Peer
from tests.serve.test_dicom_node import DCMTK, SERIES, _HeldSegmenter, _storescu, _wait_for
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")


def _copy_series(folder, change=None):
    """The test series under ``folder`` as a new series (new series and instance UIDs), each
    dataset passed through ``change`` first; returns its files."""
    folder.mkdir()
    series_uid = pydicom.uid.generate_uid()
    for path in sorted(SERIES.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        if change is not None:
            change(ds)
        ds.save_as(folder / path.name)
    return sorted(folder.iterdir())


def _messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edgeseg.listen" and text in r.getMessage()]


def test_a_series_past_max_series_is_refused_until_one_in_flight_is_segmented(running_node, tmp_path, caplog):
    """--max-series 1: while the first series is received or being segmented, the images of a
    second get 0xA700 (out of resources; one log line for the series, not one per try) and are
    not stored; once the first is segmented the second is taken."""
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    first = sorted(SERIES.glob("*.dcm"))
    second = _copy_series(tmp_path / "second")
    with running_node(wrap=_HeldSegmenter, max_series=1) as node:
        held = node.segmenter
        assert _storescu(node.port, first).returncode == 0
        assert held.started.wait(30)  # the first series is being segmented: still in flight
        for _ in range(2):  # storescu stops at the first refusal; a PACS tries again later
            refused = _storescu(node.port, second)
            assert refused.stderr.count("Refused: OutOfResources") == 1, refused.stderr
        assert node.stats.refused == 2 and node.stats.received == 3
        assert not list(node.work.glob(f"{pydicom.dcmread(second[0]).SeriesInstanceUID}*"))
        held.go.set()
        assert _wait_for(lambda: len(node.stats.segmented) == 1), node.stats
        taken = _storescu(node.port, second)
        assert taken.returncode == 0 and "Refused" not in taken.stderr, taken.stderr
        assert _wait_for(lambda: len(node.stats.segmented) == 2), node.stats
    [line] = _messages(caplog, "--max-series")
    assert pydicom.dcmread(second[0]).SeriesInstanceUID in line and "1 series are in flight" in line


def test_a_seg_the_peer_did_not_take_is_sent_once_it_is_back(running_node, tmp_path, free_port, wait_port):
    """No --out: a SEG the forward peer did not take (it was down) was dropped. It now waits in
    --unsent and goes to the peer on a later try once the peer is up; then the folder is empty."""
    port = free_port()
    unsent = tmp_path / "unsent"
    files = sorted(SERIES.glob("*.dcm"))
    received = tmp_path / "received"
    received.mkdir()
    with running_node(out=None, forward=Peer("127.0.0.1", port, "ARCHIVE"), unsent=unsent, resend_every=1.0) as node:
        assert _storescu(node.port, files).returncode == 0
        assert _wait_for(lambda: node.stats.not_forwarded), node.stats
        [waiting] = unsent.iterdir()
        kept = pydicom.dcmread(waiting)
        archive = subprocess.Popen(["storescp", "-aet", "ARCHIVE", "-od", str(received), str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            assert _wait_for(lambda: node.stats.forwarded), node.stats
        finally:
            archive.terminate()
            archive.wait(timeout=10)
    [seg] = [pydicom.dcmread(p) for p in received.iterdir()]
    assert seg.SOPInstanceUID == kept.SOPInstanceUID and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(files[0]).SeriesInstanceUID
    assert list(unsent.iterdir()) == [] and not list(node.work.rglob("*.seg.dcm"))


def test_segs_left_unsent_by_a_stop_go_out_at_the_next_start(running_node, tmp_path, free_port, wait_port,
                                                            caplog):
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    port = free_port()
    unsent = tmp_path / "unsent"
    options = dict(out=tmp_path / "out", forward=Peer("127.0.0.1", port, "ARCHIVE"), unsent=unsent)
    with running_node(**options) as node:
        assert _storescu(node.port, sorted(SERIES.glob("*.dcm"))).returncode == 0
        assert _wait_for(lambda: node.stats.not_forwarded), node.stats
    assert len(_messages(caplog, "the next start sends them")) == 1
    [waiting] = unsent.iterdir()
    uid = pydicom.dcmread(waiting).SOPInstanceUID
    received = tmp_path / "received"
    received.mkdir()
    archive = subprocess.Popen(["storescp", "-aet", "ARCHIVE", "-od", str(received), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        with running_node(**options) as node:
            assert _wait_for(lambda: node.stats.forwarded), node.stats
    finally:
        archive.terminate()
        archive.wait(timeout=10)
    assert [pydicom.dcmread(p).SOPInstanceUID for p in received.iterdir()] == [uid]
    assert list(unsent.iterdir()) == []
    assert [p.name for p in (tmp_path / "out").glob("*.seg.dcm")] == [waiting.name]  # --out keeps its copy


def test_forward_without_out_or_unsent_is_refused_at_start(serve_bundle, tmp_path, assert_one_line_error):
    from edgeseg.errors import DataError

    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "listen", str(serve_bundle), "--forward",
                           "127.0.0.1:104:ARCHIVE"], capture_output=True, text=True, timeout=120)
    assert_one_line_error(done, "--forward without --out needs --unsent DIR")
    with pytest.raises(DataError, match="--unsent"):
        DicomNode(object(), forward=Peer("127.0.0.1", 104, "ARCHIVE"))


def _decodes_12_bit_jpeg() -> bool:
    """pylibjpeg's plugin installed: pydicom refuses 12-bit JPEG Extended with Pillow and GDCM."""
    from pydicom.pixels import decoders

    return "pylibjpeg" in decoders.JPEGExtended12BitDecoder.available_plugins


@pytest.mark.skipif(not shutil.which("dcmcjpeg"), reason="dcmtk's dcmcjpeg is not installed")
def test_12_bit_jpeg_ct_is_taken_only_where_it_can_be_decoded(running_node, tmp_path, caplog):
    """CT sent JPEG Extended (lossy 12-bit, common on older scanners): with Pillow alone, which
    decodes the 8-bit form only, the node accepted every image and the series then failed to
    decode, the peer never knowing. It now offers that transfer syntax only with a 12-bit
    decoder installed; without one, the association says why in the node's log."""
    def twelve_bits(ds):
        pixels = ds.pixel_array.astype("int32") + 1024  # stored values 0..4095, HU unchanged
        ds.PixelData = pixels.clip(0, 4095).astype("uint16").tobytes()
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit, ds.RescaleIntercept = 0, 12, 11, -2048

    plain = _copy_series(tmp_path / "plain", twelve_bits)
    jpeg = tmp_path / "jpeg"
    jpeg.mkdir()
    for path in plain:
        subprocess.run(["dcmcjpeg", "+ee", str(path), str(jpeg / path.name)], check=True, capture_output=True)
    assert pydicom.dcmread(jpeg / plain[0].name).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51"
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    with running_node() as node:
        done = subprocess.run(["storescu", "-xx", "-R", "-aec", "EDGESEG", "127.0.0.1", str(node.port),
                               *map(str, sorted(jpeg.iterdir()))], capture_output=True, text=True, timeout=60)
        if _decodes_12_bit_jpeg():
            assert done.returncode == 0, done.stderr
            assert _wait_for(lambda: node.stats.segmented), node.stats
            return
        assert done.returncode != 0
    assert node.stats.received == 0 and node.stats.failed == []
    [line] = _messages(caplog, "transfer syntaxes not decoded here")
    assert "JPEG Extended" in line and "STORESCU" in line


@pytest.mark.parametrize("case", ["truncated pixel data", "modality MR"])
def test_an_image_that_could_only_fail_later_is_refused_as_it_arrives(running_node, tmp_path, caplog, case):
    """Images acknowledged with Success but unusable (pixel data shorter than its header says, an
    MR image sent as CT Image Storage) made the whole series fail when read, after the peer was
    told all was well. Each is now refused with its C-STORE, stored nowhere, one log line each."""
    def spoil(ds):
        if case == "truncated pixel data":
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        else:
            ds.Modality = "MR"

    files = _copy_series(tmp_path / "spoilt", spoil)
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    with running_node() as node:
        done = _storescu(node.port, files)
        expected = "CannotUnderstand" if case == "truncated pixel data" else "DataSetDoesNotMatchSOPClass"
        assert done.stderr.count(expected) == 1, done.stderr  # storescu stops at the first refusal
        assert node.stats.received == 0 and node.stats.refused == 1
        assert not list(node.work.rglob("*.dcm"))
    assert len(_messages(caplog, "refused image")) == 1 and node.stats.failed == []


def test_an_unreadable_file_in_unsent_does_not_hold_up_the_segs_after_it(tmp_path, free_port, wait_port):
    """A file in the unsent folder that is no DICOM (a partial copy by hand, a disk fault) raised
    pydicom's error out of the resend: every round stopped at it, so no SEG behind it ever went
    out, and a resend after a fresh forward turned a forwarded series into a failed one. It now
    stays and is named, and the SEGs after it go to the peer."""
    from edgeseg.serve.dicom_forward import UnsentFolder, send_seg

    folder = UnsentFolder(tmp_path / "unsent")
    folder.folder.mkdir()
    broken = folder.folder / "a-broken.seg.dcm"
    broken.write_bytes(b"not a DICOM file")
    good = folder.keep(SERIES.parent / "liver.dcm")
    good.rename(folder.folder / "b-good.seg.dcm")
    received = tmp_path / "received"
    received.mkdir()
    port = free_port()
    archive = subprocess.Popen(["storescp", "-aet", "ARCHIVE", "-od", str(received), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        sent, failure = folder.resend(lambda path: send_seg(Peer("127.0.0.1", port, "ARCHIVE"), "EDGESEG", path))
    finally:
        archive.terminate()
        archive.wait(timeout=10)
    assert sent == 1 and folder.pending() == [broken]
    assert "a-broken.seg.dcm" in str(failure)
    [seg] = [pydicom.dcmread(p) for p in received.iterdir()]
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
