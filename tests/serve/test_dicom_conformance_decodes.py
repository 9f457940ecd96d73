"""The compressed rows of the conformance statement's "Transfer syntaxes accepted for CT" that
tests/serve/test_dicom_node_syntaxes.py (dcmtk's encoders) cannot make: JPEG 2000 and JPEG-LS
near-lossless, encoded here by GDCM, sent by pynetdicom in that syntax, and segmented with the HU
of the uncompressed series (the oracle: the series reader on the original files; GDCM encodes
the JPEG 2000 and near-lossless JPEG-LS syntaxes reversibly by default, so the HU are exact). An accepted
syntax whose images fail or decode to other values is what this catches."""

from __future__ import annotations

import numpy as np
import pytest

from tests.serve.conformance_tables import statement, uids
from tests.serve.test_dicom_node import SERIES, _wait_for
from tests.serve.test_dicom_node_decodes import _Capture
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
gdcm = pytest.importorskip("gdcm", reason="the io extra (GDCM) encodes the files")

# statement UID -> GDCM's name of the syntax
GDCM_SYNTAXES = {"1.2.840.10008.1.2.4.90": "JPEG2000Lossless", "1.2.840.10008.1.2.4.91": "JPEG2000",
                 "1.2.840.10008.1.2.4.81": "JPEGLSNearLossless", "1.2.840.10008.1.2.4.57": "JPEGLosslessProcess14"}


def _encoded(syntax: str, folder) -> list:
    folder.mkdir()
    for path in sorted(SERIES.glob("*.dcm")):
        reader = gdcm.ImageReader()
        reader.SetFileName(str(path))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, GDCM_SYNTAXES[syntax])))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(folder / path.name))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()
    datasets = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    for ds in datasets:  # GDCM's writer adds RescaleType US, which the node rightly refuses (not HU)
        ds.RescaleType = "HU"
    return datasets


@pytest.mark.parametrize("syntax", sorted(GDCM_SYNTAXES))
def test_a_listed_compressed_syntax_is_received_and_decoded_to_the_hu_sent(running_node, tmp_path, syntax):
    from edgeseg.data.dicom import read_dicom_series

    listed = {uid for row in statement()["Transfer syntaxes accepted for CT"] for uid in uids(row["UID"])}
    assert syntax in listed
    datasets = _encoded(syntax, tmp_path / "encoded")
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in datasets} == {syntax}
    ae = pynetdicom.AE(ae_title="PACS")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", syntax)
    with running_node(wrap=_Capture) as node:
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESEG")
        assert [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts] == [syntax]
        assert [assoc.send_c_store(ds).Status for ds in datasets] == [0x0000] * len(datasets)
        assoc.release()
        assert _wait_for(lambda: node.stats.segmented or node.stats.failed), node.stats
    assert node.stats.failed == []
    [volume] = node.segmenter.volumes
    np.testing.assert_array_equal(volume.hu, read_dicom_series(SERIES).hu)
