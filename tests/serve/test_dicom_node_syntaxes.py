"""The HU the DICOM node hands the model, for each transfer syntax a PACS sends CT in: the peer is
dcmtk's storescu, the compressed files are made by dcmtk's own encoders (dcmcjpeg, dcmcjpls,
dcmcrle), and the oracle is the uncompressed series read by the reader, or, for the lossy JPEG
Extended, the same files decoded by dcmtk's dcmdjpeg."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from tests.serve.test_dicom_node import DCMTK, SERIES, _wait_for
from tests.serve.test_dicom_node_decodes import _Capture
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK or not shutil.which("dcmcjpeg"),
                                reason="dcmtk (storescu, dcmcjpeg, dcmcjpls, dcmcrle) is not installed")

# (encoder command, storescu option proposing the syntax); None: the files are sent uncompressed
SYNTAXES = {
    "jpeg-lossless-sv1": (["dcmcjpeg", "+e1"], "-xs"),
    "jpeg-ls-lossless": (["dcmcjpls"], "-xt"),
    "rle": (["dcmcrle"], "-xr"),
    "deflated": (None, "-xd"),
    "jpeg-extended-12bit": (["dcmcjpeg", "+ee"], "-xx"),
}


def _encoded(tool: list[str] | None, folder) -> list:
    folder.mkdir()
    for path in sorted(SERIES.glob("*.dcm")):
        if tool is None:
            shutil.copy(path, folder / path.name)
        else:
            subprocess.run([*tool, str(path), str(folder / path.name)], check=True, capture_output=True, timeout=60)
    return sorted(folder.iterdir())


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_the_node_hands_the_model_the_hu_of_each_syntax_it_accepts(running_node, tmp_path, syntax):
    """Each syntax is either not negotiated (storescu cannot send, the node stores nothing) or
    accepted, and then every image is segmented with the HU of its oracle: an accepted
    association whose images fail, or decode to other values, is what this test catches."""
    from edgeseg.data.dicom import read_dicom_series
    from edgeseg.serve.dicom_intake import decodable_transfer_syntaxes

    tool, propose = SYNTAXES[syntax]
    files = _encoded(tool, tmp_path / syntax)
    if syntax == "jpeg-extended-12bit":  # lossy: the oracle is dcmtk's own decoder
        oracle = tmp_path / "dcmdjpeg"
        oracle.mkdir()
        for path in files:
            subprocess.run(["dcmdjpeg", str(path), str(oracle / path.name)], check=True, capture_output=True, timeout=60)
        expected = read_dicom_series(oracle).hu
    else:
        expected = read_dicom_series(SERIES).hu
    sent_in = str(pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    with running_node(wrap=_Capture) as node:
        done = subprocess.run(["storescu", propose, "-R", "-aec", "EDGESEG", "127.0.0.1", str(node.port),
                               *map(str, files)], capture_output=True, text=True, timeout=60)
        if sent_in not in decodable_transfer_syntaxes():  # refused at negotiation: the peer must convert
            assert done.returncode != 0, done.stderr
            assert node.stats.received == 0
            return
        assert done.returncode == 0 and "Failed" not in done.stderr, done.stderr
        assert _wait_for(lambda: node.stats.segmented or node.stats.failed), node.stats
    assert node.stats.failed == [] and node.stats.received == len(files)
    [volume] = node.segmenter.volumes
    np.testing.assert_array_equal(volume.hu, expected)
