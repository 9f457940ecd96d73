"""docs/dicom-conformance.md against a running node, continued: the C-STORE statuses it sends,
the SEG it writes (its attributes, its segment codes, its file meta) and the association it
opens to forward it. The SEG is read with pydicom and highdicom; the archive is a pynetdicom
Storage SCP recording what it was proposed."""

from __future__ import annotations

import re
import time

import pytest

from edgeseg.runtime.segment_codes import segment_coding
from tests.serve.conformance_tables import key_values, seg_codes, statement, ticked, uids
from tests.serve.test_dicom_node import SERIES
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
TAG = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)")


def _slices(series_uid: str | None = None) -> list:
    datasets = [pydicom.dcmread(path) for path in sorted(SERIES.glob("*.dcm"))]
    for ds in datasets if series_uid else []:
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
    return datasets


def _stated_status(code: int) -> str:
    [row] = [row for row in statement()["C-STORE statuses sent"] if int(row["status"], 16) == code]
    return row["meaning (PS3.4 B.2.3, PS3.7 C)"]


def test_each_c_store_status_is_sent_with_its_stated_meaning(running_node):
    """One image for each status the statement lists as the node's own, each answered with it;
    and the statement lists every status the node's code can send."""
    from edgeseg.serve import dicom_intake

    sent = {}
    ae = pynetdicom.AE(ae_title="PACS")
    for abstract in (CT, MR):
        ae.add_requested_context(abstract, "1.2.840.10008.1.2")

    def new_slice(change):
        ds = _slices(pydicom.uid.generate_uid())[0]
        change(ds)
        return ds

    images = {"MR": lambda ds: setattr(ds, "SOPClassUID", MR), "modality": lambda ds: setattr(ds, "Modality", "MR"),
              "cut": lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]),
              "no rows": lambda ds: delattr(ds, "Rows"), "too large": lambda ds: setattr(ds, "Rows", 60000),
              "second series": lambda ds: None}
    with running_node(idle=60, max_series=1) as node:
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESEG")
        sent["stored"] = {(assoc.send_c_store(ds).Status, "") for ds in _slices()}
        for case, change in images.items():
            answer = assoc.send_c_store(new_slice(change))
            sent[case] = {(answer.Status, str(answer.get("ErrorComment", "")))}
        assoc.release()
    # a failure other than 0x0122 carries an Error Comment saying why (it did not for --max-series,
    # the size limits and an image whose size could not be read)
    assert all(comment for case, [(status, comment)] in sent.items() if status not in (0x0000, 0x0122)), sent
    assert {case: {status for status, _ in answers} for case, answers in sent.items()} == {
        "stored": {0x0000}, "MR": {0x0122}, "modality": {0xA900}, "cut": {0xC000}, "no rows": {0xC000},
        "too large": {0xA700}, "second series": {0xA700}}
    assert "--max-series" in sent["second series"].pop()[1]
    assert [_stated_status(code) for code in (0x0000, 0x0122, 0xA900, 0xC000, 0xA700)] == [
        "Success", "Refused: SOP Class not supported", "Error: Data Set does not match SOP Class",
        "Error: Cannot understand", "Refused: Out of Resources"]
    own = {value for name, value in vars(dicom_intake).items() if name.startswith("STATUS_")}
    listed = {int(row["status"], 16) for row in statement()["C-STORE statuses sent"]}
    assert listed == own  # 0xC211 too: the node's answer where storing fails unexpectedly


@pytest.fixture
def archive(free_port):
    """A pynetdicom Storage SCP for SEGs, recording each association's proposed contexts and
    implementation identifiers."""
    seen = []

    def on_store(event):
        requestor = event.assoc.requestor
        contexts = [(str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax], cx.context_id)
                    for cx in requestor.primitive.presentation_context_definition_list]
        seen.append((contexts, requestor.implementation_class_uid, requestor.implementation_version_name))
        return 0x0000

    ae = pynetdicom.AE(ae_title="ARCHIVE")
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.66.4")
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(pynetdicom.evt.EVT_C_STORE, on_store)])
    yield port, seen
    server.shutdown()


def _value(element) -> str:
    value = element.value
    return "\\".join(map(str, value)) if isinstance(value, (list, pydicom.multival.MultiValue)) else str(value)


def test_the_seg_and_its_forwarding_are_as_stated(running_node, archive, tmp_path):
    from edgeseg.serve.dicom_forward import Peer

    port, seen = archive
    sources = _slices()
    for ds in sources:  # a name in ISO 8859-1, as the statement's character set section has it
        ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 100", "Müller^Jörg"
    with running_node(forward=Peer("127.0.0.1", port, "ARCHIVE")) as node:
        assoc = pynetdicom.AE(ae_title="PACS")
        assoc.add_requested_context(CT, "1.2.840.10008.1.2")
        assoc = assoc.associate("127.0.0.1", node.port, ae_title="EDGESEG")
        assert {assoc.send_c_store(ds).Status for ds in sources} == {0x0000}
        assoc.release()
        deadline = time.monotonic() + 120
        while not seen and time.monotonic() < deadline:
            time.sleep(0.2)
    [path] = (tmp_path / "out").glob("*.seg.dcm")
    seg, source = pydicom.dcmread(path), sources[0]

    for row in statement()["Attributes of the SEG"]:  # each row: present, and as its value says
        tag = pydicom.tag.Tag(*(int(part, 16) for part in TAG.match(row["tag"]).groups()))
        assert tag in seg, row
        literal = ticked(row["value"])
        if literal is not None:
            assert _value(seg[tag]) == literal, row
        elif row["value"].startswith("source"):
            assert _value(seg[tag]) == _value(source[tag]), row
        elif row["value"].startswith("new UID"):
            assert pydicom.uid.UID(seg[tag].value).is_valid and seg[tag].value != source[tag].value, row

    assert "Müller".encode("latin-1") in path.read_bytes() and str(seg.PatientName) == "Müller^Jörg"

    segments = {item.SegmentLabel: item for item in hd.seg.segread(path).SegmentSequence}
    stated_segment = statement()["Attributes of each segment"]
    codes = seg_codes()
    for name, item in segments.items():
        for row in stated_segment:
            tag = pydicom.tag.Tag(*(int(part, 16) for part in TAG.match(row["tag"]).groups()))
            literal = ticked(row["value"])
            assert literal is None or _value(item[tag]) == literal, row
        category, kind, region = codes.get(name, codes[None])  # None: "any other name"
        found = [tuple(str(getattr(code, part)) for part in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning"))
                 for code in (item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0])]
        assert found == [category, kind] and ("AnatomicRegionSequence" in item) == (region is not None)
    assert set(segments) == {"liver"}

    meta = key_values(statement()["SEG file meta information"])
    assert seg.file_meta.TransferSyntaxUID == meta["Transfer Syntax UID"]
    assert seg.file_meta.ImplementationClassUID == meta["Implementation Class UID"]
    assert seg.file_meta.ImplementationVersionName == f"highdicom{hd.__version__}"

    [(contexts, class_uid, version_name)] = seen
    [proposed] = statement()["Presentation contexts proposed"]
    assert [(abstract, syntaxes) for abstract, syntaxes, _ in contexts] == [
        (uids(proposed["UID"])[0], uids(proposed["transfer syntaxes"]))]
    stated = key_values(statement()["Implementation identifying information"])
    assert (class_uid, version_name) == (stated["Implementation Class UID"], stated["Implementation Version Name"])


def test_every_class_name_in_the_codes_table_is_coded_as_the_code_says():
    """docs/dicom-seg-codes.md, which the statement names for the segment codes, row by row
    against edgeseg.runtime.segment_codes (the SEG test above checks the SEG against the page)."""
    def triple(coded):
        return None if coded is None else (coded.scheme, coded.value, coded.meaning)

    for name, (category, kind, region) in seg_codes().items():
        coding = segment_coding(name if name is not None else "no such class")
        assert (triple(coding.category), triple(coding.property_type), triple(coding.region)) == (category, kind, region)


def test_an_error_comment_is_a_valid_lo():
    """The Error Comment (LO) of a refusal whose reason is an exception's text: a line break in
    it went out as it was, which LO (no control characters) does not allow."""
    from edgeseg.serve.dicom_intake import failure_status

    comment = failure_status(0xC000, "it cannot be read:\nline two\\three\tfour", "").ErrorComment
    assert comment == "it cannot be read: line two/three four"


def test_an_error_comment_drops_the_images_uids_and_keeps_the_classes():
    """An image's, series' or study's UID is left out of the Error Comment; a SOP class (or any UID
    DICOM registers, under 1.2.840.10008) stays: removing it too left "its SOP Class UID is , sent
    on ...". A comment past 64 characters is cut at a word."""
    from edgeseg.serve.dicom_intake import failure_status

    mismatch = "its SOP Class UID 1.2.840.10008.5.1.4.1.1.2 is not its context's (1.2.840.10008.5.1.4.1.1.2.1)"
    assert failure_status(0xA900, mismatch, "1.2.3.4.5").ErrorComment == \
        "its SOP Class UID 1.2.840.10008.5.1.4.1.1.2 is not its context's"
    named = "DICOM file 1.2.826.0.1.5: ImagePositionPatient missing; series 1.2.826.0.1.6: study 1.2.826.0.1.7 too"
    assert failure_status(0xA900, named, "1.2.826.0.1.5").ErrorComment == "ImagePositionPatient missing; study too"
