"""The DICOM node decodes each compressed image once: the intake check decodes it in full, and
what is stored is the decoded image, so the series read does not decode it again. dcmtk's
storescu is the peer; pydicom's own decoders (Pillow for JPEG 2000, pydicom's RLE) are counted
where they run."""

from __future__ import annotations

import io
import subprocess
import threading

import numpy as np
import pytest

from tests.serve.test_dicom_node import DCMTK, SERIES, _wait_for
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")


def _j2k_lossless(ds) -> None:
    """``ds`` in JPEG 2000 Lossless, encoded by Pillow (pydicom encodes JPEG 2000 only with
    pylibjpeg-openjpeg): the stored values shifted to unsigned, the intercept by as much, so the
    HU are the same."""
    Image = pytest.importorskip("PIL.Image")
    from pydicom.encaps import encapsulate

    stored = ds.pixel_array.astype(np.int32)
    low = int(stored.min())
    buffer = io.BytesIO()
    try:
        Image.fromarray((stored - low).astype(np.uint16)).save(buffer, format="JPEG2000", irreversible=False,
                                                                no_jp2=True)
    except (OSError, KeyError) as exc:
        pytest.skip(f"Pillow cannot encode JPEG 2000 here: {exc}")
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 16, 15
    ds.RescaleIntercept = float(ds.RescaleIntercept) + low * float(ds.get("RescaleSlope", 1))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless


class _Capture:
    """A real Segmenter that keeps the volume it was given."""

    def __init__(self, segmenter) -> None:
        self._segmenter, self.labels, self.volumes = segmenter, segmenter.labels, []

    def __getattr__(self, name):  # the rest (runner, manifest, ...: the SEG's provenance) is the real one's
        return getattr(self._segmenter, name)

    def predict_volume(self, volume):
        self.volumes.append(volume)
        return self._segmenter.predict_volume(volume)


def _counted(decode, calls: list, lock):
    def counted(src, runner):
        with lock:
            calls.append(runner.transfer_syntax)
        return decode(src, runner)

    return counted


@pytest.mark.parametrize("syntax", ["jpeg2000", "rle"])
def test_each_compressed_image_is_decoded_once(running_node, tmp_path, monkeypatch, syntax):
    """Each image was decoded on arrival (to refuse one that cannot be) and again when its series
    was read, doubling the node's JPEG 2000 decoding. Now once per image, the volume read holds
    the HU of the uncompressed series, and the SEG references the SOP instances sent."""
    from pydicom.pixels import decoders
    from pydicom.pixels.decoders.base import Decoder

    from edgeseg.data.dicom import read_dicom_series

    compressed = tmp_path / syntax
    compressed.mkdir()
    for path in sorted(SERIES.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if syntax == "rle":
            ds.compress(pydicom.uid.RLELossless)
        else:
            _j2k_lossless(ds)
        ds.save_as(compressed / path.name, enforce_file_format=True)
    files = sorted(compressed.iterdir())
    assert np.array_equal(read_dicom_series(compressed).hu, read_dicom_series(SERIES).hu)  # lossless as made

    decoded, lock = [], threading.Lock()
    for decoder in vars(decoders).values():  # each plugin's frame decoder, counted where the runner finds it
        if isinstance(decoder, Decoder):
            for name, real in list(decoder._available.items()):
                monkeypatch.setitem(decoder._available, name, _counted(real, decoded, lock))
    propose = {"rle": "-xr", "jpeg2000": "-xv"}[syntax]
    with running_node(wrap=_Capture) as node:
        done = subprocess.run(["storescu", propose, "-R", "-aec", "EDGESEG", "127.0.0.1", str(node.port),
                               *map(str, files)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "Failed" not in done.stderr, done.stderr
        assert _wait_for(lambda: node.stats.segmented or node.stats.failed), node.stats
    assert node.stats.failed == [] and node.stats.received == len(files)
    assert len(decoded) == len(files), f"{len(decoded)} decodes of {len(files)} images"
    [volume] = node.segmenter.volumes
    assert np.array_equal(volume.hu, read_dicom_series(SERIES).hu)
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    seg = pydicom.dcmread(tmp_path / "out" / f"{uid}.seg.dcm")
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(p).SOPInstanceUID for p in files}
