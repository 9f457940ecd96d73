"""A C-STORE whose command names a CT class, sent on a presentation context of another class.

pynetdicom hands the handler the data set of the context it came on, decoded (inflated, for a
deflated context) in that context's transfer syntax, and never checks the command's class against
it. Every storage class was accepted Deflated, and the node decoded the data set before checking
the class: a peer proposing MR Image Storage Deflated and sending a C-STORE saying CT had the node
inflate 1 GB from 1 MB. Now no storage class is accepted Deflated, and the command's class is
checked against the context before the data set is touched. Real node, real associations."""

from __future__ import annotations

import pytest

from tests.serve.test_dicom_node import SERIES
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")

MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"


def test_no_storage_class_is_accepted_deflated(running_node):
    """Each of the storage classes pynetdicom knows, proposed in Deflated Explicit VR Little Endian
    alone: every context is rejected (MR, Parametric Map and 165 more were accepted)."""
    classes = [str(cx.abstract_syntax) for cx in pynetdicom.AllStoragePresentationContexts]
    accepted = []
    with running_node() as node:
        for start in range(0, len(classes), 120):  # at most 128 contexts a request
            ae = pynetdicom.AE(ae_title="PACS")
            for sop_class in classes[start:start + 120]:
                ae.add_requested_context(sop_class, DEFLATED)
            assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESEG")
            if assoc.is_established:
                accepted += [str(cx.abstract_syntax) for cx in assoc.accepted_contexts]
                assoc.release()
    assert accepted == []


def test_a_ct_command_on_another_class_context_is_refused_before_its_data_set_is_read(running_node, tmp_path,
                                                                                      monkeypatch):
    """The command says CT Image Storage, the context is MR's, the data set is bytes no DICOM
    parser reads: answered 0xA900 naming the mismatch, the SOP class in its Error Comment (it was
    0xC000 "it cannot be read": the node had decoded it; and the comment lost the class, "SOP class
    is not ..."), nothing stored, and the association stays up for a CT image. The same bytes on
    CT's own context: 0xC000 with its Error Comment."""
    source = pydicom.dcmread(sorted(SERIES.glob("*.dcm"))[0])
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT, source.SOPInstanceUID
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    garbage = tmp_path / "garbage.dcm"
    with open(garbage, "wb") as out:
        out.write(b"\0" * 128 + b"DICM")
        pydicom.filewriter.write_file_meta_info(out, meta)
        # a sequence of undefined length whose item holds no element: pydicom raises reading it
        out.write(b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00" + b"\x01" * 40)
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    with running_node() as node:
        ae = pynetdicom.AE(ae_title="PACS")
        ae.add_requested_context(CT, pydicom.uid.ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESEG")
        unreadable = assoc.send_c_store(garbage)  # on its own context: read, and refused as unreadable
        assoc.release()
        ae = pynetdicom.AE(ae_title="PACS")
        ae.add_requested_context(MR, pydicom.uid.ExplicitVRLittleEndian)
        ae.add_requested_context(CT, pydicom.uid.ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESEG")
        [mr] = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == MR]
        choose = assoc._get_valid_context
        monkeypatch.setattr(assoc, "_get_valid_context", lambda *args, **kwargs: mr)  # the peer's own choice
        status = assoc.send_c_store(garbage)
        monkeypatch.setattr(assoc, "_get_valid_context", choose)
        monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", False)
        after = assoc.send_c_store(source)
        assoc.release()
        received = node.stats.received
    assert (status.Status, status.ErrorComment) == (0xA900, f"SOP class {CT} is not its context's")
    assert after.Status == 0x0000 and received == 1
    assert unreadable.Status == 0xC000 and unreadable.ErrorComment.startswith("it cannot be read: "), unreadable
