"""docs/dicom-conformance.md against a running node: the tables of the statement are read
(tests/serve/conformance_tables.py) and each is checked both ways where it can be, so that a
change to the node the statement does not follow, or to the statement the node does not do,
fails here. The peers are pynetdicom and, where installed, dcmtk's echoscu and storescu."""

from __future__ import annotations

import importlib.util
import logging
import subprocess

import pytest

import edgeseg
from edgeseg.serve.dicom_identity import implementation_version_name
from tests.serve.conformance_tables import key_values, statement, ticked, uids
from tests.serve.dcmtk_path import dcmtk_tool
from tests.serve.test_dicom_node import SERIES
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")

CT_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
# Abstract syntaxes a PACS proposes that a storage-only node must not take (none is in the statement)
NOT_LISTED = {"1.2.840.10008.5.1.4.1.2.2.1": "Study Root Query/Retrieve FIND",
              "1.2.840.10008.5.1.4.31": "Modality Worklist FIND",
              "1.2.840.10008.1.20.1": "Storage Commitment Push Model"}
# what the "accepted where" column names, as the module it installs
INSTALLS = {"`pylibjpeg-libjpeg` installed": "libjpeg", "`pylibjpeg-openjpeg` installed": "openjpeg"}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _ct_syntaxes(with_extra: bool = True) -> list[str]:
    """The statement's transfer syntaxes for CT, in its order (the ``io`` extra installed: the
    table is for it), then those of its "not accepted" table whose decoder is installed here."""
    if not _installed("gdcm"):
        pytest.skip("the statement's CT transfer syntaxes are those of the io extra (GDCM) installed")
    rows = sorted(statement()["Transfer syntaxes accepted for CT"], key=lambda row: int(row["order"]))
    extra = [uids(row["UID"])[0] for row in statement()["Transfer syntaxes not accepted for CT"]
             if row["accepted where"] != "never" and _installed(INSTALLS[row["accepted where"]])]
    return [uids(row["UID"])[0] for row in rows] + (extra if with_extra else [])


def _associate(port: int, contexts: list[tuple[str, list[str]]], ae_title: str = "EDGESEG", calling: str = "PACS"):
    ae = pynetdicom.AE(ae_title=calling)
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    return ae.associate("127.0.0.1", port, ae_title=ae_title)


def _negotiated(port: int, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (abstract syntax, transfer syntax) of ``pairs``, each proposed as a context of its own,
    that the node accepts (in associations of up to 128 contexts)."""
    accepted = set()
    for start in range(0, len(pairs), 128):
        assoc = _associate(port, [(abstract, [syntax]) for abstract, syntax in pairs[start:start + 128]])
        if assoc.is_established:
            accepted |= {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
            assoc.release()
    return accepted


def test_the_ct_syntaxes_accepted_are_those_listed_and_no_other(running_node):
    """Every transfer syntax pydicom knows, proposed alone for each CT class: the node accepts
    exactly the statement's list, and refuses each row of its "not accepted" table."""
    listed = _ct_syntaxes()
    refused = [uids(row["UID"])[0] for row in statement()["Transfer syntaxes not accepted for CT"]
               if row["accepted where"] == "never" or not _installed(INSTALLS[row["accepted where"]])]
    known = sorted({str(uid) for uid in pydicom.uid.AllTransferSyntaxes} | set(listed) | set(refused))
    with running_node() as node:
        accepted = _negotiated(node.port, [(ct, syntax) for ct in CT_CLASSES for syntax in known])
    for ct in CT_CLASSES:
        taken = sorted(syntax for abstract, syntax in accepted if abstract == ct)
        assert taken == sorted(listed), f"{ct}: the node accepts {taken}, the statement lists {sorted(listed)}"
        assert not set(taken) & set(refused)


def test_each_listed_presentation_context_is_accepted_and_others_are_not(running_node):
    """The "Presentation contexts accepted" table, row by row, syntax by syntax; and the abstract
    syntaxes of a query, a worklist and storage commitment, which it does not list, rejected."""
    rows = statement()["Presentation contexts accepted"]
    pairs = [(uids(row["UID"])[0], syntax) for row in rows for syntax in uids(row["transfer syntaxes"])]
    pairs += [(uids(row["UID"])[0], syntax) for row in rows if not uids(row["transfer syntaxes"])
              for syntax in _ct_syntaxes()]
    listed = {uid for row in rows for uid in uids(row["UID"])}
    assert listed >= set(CT_CLASSES) and not listed & set(NOT_LISTED)
    with running_node() as node:
        accepted = _negotiated(node.port, pairs)
        assert sorted(set(pairs) - accepted) == []
        assert _negotiated(node.port, [(uid, "1.2.840.10008.1.2") for uid in NOT_LISTED]) == set()
        # and for the rows that list their syntaxes, no syntax beyond them
        known = sorted({str(uid) for uid in pydicom.uid.AllTransferSyntaxes})
        listed_rows = {uids(row["UID"])[0]: set(uids(row["transfer syntaxes"]))
                       for row in rows if uids(row["transfer syntaxes"])}
        taken = _negotiated(node.port, [(abstract, syntax) for abstract in listed_rows for syntax in known])
        assert {abstract: {ts for a, ts in taken if a == abstract} for abstract in listed_rows} == listed_rows
        for row in rows:  # the node is SCP (the requestor, seen here, SCU) even where roles are proposed
            ext = [pynetdicom.build_role(uids(row["UID"])[0], scu_role=True, scp_role=True)]
            ae = pynetdicom.AE(ae_title="PACS")
            ae.add_requested_context(uids(row["UID"])[0], ["1.2.840.10008.1.2"])
            assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESEG", ext_neg=ext)
            [context] = assoc.accepted_contexts
            assert (row["role"], context.as_scu, context.as_scp) == ("SCP", True, False)
            assoc.release()


def test_the_node_takes_the_syntax_first_in_its_order(running_node):
    """A context proposing every listed syntax in the reverse order gets the statement's first."""
    listed = _ct_syntaxes(with_extra=False)
    with running_node() as node:
        for first in range(len(listed)):
            assoc = _associate(node.port, [(CT_CLASSES[0], listed[first:][::-1])])
            [context] = assoc.accepted_contexts
            assert context.transfer_syntax[0] == listed[first]
            assoc.release()


def test_the_implementation_identifiers_and_limits_are_those_stated(running_node):
    """What the A-ASSOCIATE-AC carries, as pynetdicom reads it and, where installed, as dcmtk's
    echoscu prints it."""
    stated = key_values(statement()["Implementation identifying information"])
    limits = key_values(statement()["Association limits"])
    assert stated["Implementation Version Name"] == implementation_version_name(edgeseg.__version__)
    with running_node() as node:
        assoc = _associate(node.port, [("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])])
        acceptor = assoc.acceptor
        assert acceptor.implementation_class_uid == stated["Implementation Class UID"]
        assert acceptor.implementation_version_name == stated["Implementation Version Name"]
        assert acceptor.maximum_length == int(limits["Maximum PDU length received"])
        assert acceptor.asynchronous_operations == (1, 1)  # no reply item
        assert node.max_associations == int(limits["Simultaneous associations accepted"])
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        if dcmtk_tool("echoscu") is not None:
            echo = subprocess.run([dcmtk_tool("echoscu"), "-d", "-aec", "EDGESEG", "127.0.0.1", str(node.port)],
                                  capture_output=True, text=True, timeout=60)
            assert echo.returncode == 0, echo.stderr
            said = echo.stdout + echo.stderr
            assert f"Their Implementation Class UID:    {stated['Implementation Class UID']}" in said, said
            assert f"Their Implementation Version Name: {stated['Implementation Version Name']}" in said, said


def test_associations_are_rejected_as_stated(running_node):
    rows = {row["cause"]: row for row in statement()["Association rejections"]}

    def numbers(row):
        return tuple(int(row[column].split()[0]) for column in ("result", "source", "reason"))

    with running_node(calling_aets=["MODALITY"]) as node:
        for cause, called, calling in [("called AE title is not `--ae-title`", "OTHER", "MODALITY"),
                                       ("calling AE title not in `--allow-calling`", "EDGESEG", "STRANGER")]:
            assoc = _associate(node.port, [("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])], called, calling)
            answer = assoc.acceptor.primitive
            assert assoc.is_rejected and (answer.result, answer.result_source, answer.diagnostic) == numbers(rows[cause])


@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.88.35"],
                         ids=["parametric-map", "extensible-sr"])
def test_a_storage_class_past_pynetdicoms_first_120_is_answered_not_rejected(running_node, sop_class):
    """Parametric Map and Extensible SR Storage, among some 50 classes outside pynetdicom's
    StoragePresentationContexts, had their presentation context rejected: a PACS sending a study
    with them saw a failed association where the node means to answer each such image 0x0122."""
    ds = pydicom.dcmread(sorted(SERIES.glob("*.dcm"))[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    with running_node() as node:
        assoc = _associate(node.port, [(sop_class, ["1.2.840.10008.1.2"])])
        assert assoc.is_established and len(assoc.accepted_contexts) == 1
        assert assoc.send_c_store(ds).Status == 0x0122
        assoc.release()


# dcmtk: (dcmconv option writing the file in the syntax, storescu option proposing it first)
DCMTK_UNCOMPRESSED = {"1.2.840.10008.1.2": ("+ti", "-xi"), "1.2.840.10008.1.2.1": ("+te", "-xe"),
                      "1.2.840.10008.1.2.2": ("+tb", "-xb")}


@pytest.mark.skipif(dcmtk_tool("storescu") is None or dcmtk_tool("dcmconv") is None,
                    reason="dcmtk (storescu, dcmconv) is not installed: apt-get install dcmtk")
@pytest.mark.parametrize("syntax", sorted(DCMTK_UNCOMPRESSED))
def test_dcmtk_storescu_sends_ct_in_each_uncompressed_syntax_listed(running_node, tmp_path, syntax):
    """dcmtk as the peer, for the uncompressed rows of the CT table (the compressed ones are sent
    by dcmtk in tests/serve/test_dicom_node_syntaxes.py): each image stored with Success, sent
    in that syntax without conversion."""
    listed = _ct_syntaxes()
    assert syntax in listed
    convert, propose = DCMTK_UNCOMPRESSED[syntax]
    files = []
    for path in sorted(SERIES.glob("*.dcm")):
        files.append(tmp_path / path.name)
        subprocess.run([dcmtk_tool("dcmconv"), convert, str(path), str(files[-1])], check=True, timeout=60)
    with running_node() as node:
        done = subprocess.run([dcmtk_tool("storescu"), "-v", propose, "-aec", "EDGESEG", "127.0.0.1", str(node.port),
                               *map(str, files)], capture_output=True, text=True, timeout=120)
    said = done.stdout + done.stderr
    assert done.returncode == 0 and said.count("Received Store Response (Success)") == len(files), said
    words = {"1.2.840.10008.1.2": "Little Endian Implicit", "1.2.840.10008.1.2.1": "Little Endian Explicit",
             "1.2.840.10008.1.2.2": "Big Endian Explicit"}[syntax]
    assert said.count(f"Converting transfer syntax: {words} -> {words}") == len(files), said


def test_one_host_holds_the_associations_stated_then_is_rejected_as_stated(running_node):
    """The per-address limit of "Association limits" (8 of the default 10), then the
    A-ASSOCIATE-RJ of "Association rejections" for it."""
    limits = key_values(statement()["Association limits"])
    per_host = int(limits["Simultaneous associations per peer address"].split()[0])
    [row] = [row for row in statement()["Association rejections"] if row["cause"].startswith("past")]
    stated = tuple(int(row[column].split()[0]) for column in ("result", "source", "reason"))
    held = []
    with running_node() as node:
        assert node.max_associations == int(limits["Simultaneous associations accepted"])
        try:
            for _ in range(per_host):
                held.append(_associate(node.port, [("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])]))
                assert held[-1].is_established
            refused = _associate(node.port, [("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])])
            answer = refused.acceptor.primitive
            assert refused.is_rejected and (answer.result, answer.result_source, answer.diagnostic) == stated
        finally:
            for assoc in held:
                assoc.release()


def test_extended_negotiation_is_not_answered(running_node):
    """SOP class extended negotiation, user identity (a positive response asked for) and an
    asynchronous operations window proposed: the association is accepted with none answered."""
    from pynetdicom.pdu_primitives import (AsynchronousOperationsWindowNegotiation, SOPClassExtendedNegotiation,
                                           UserIdentityNegotiation)

    extended = SOPClassExtendedNegotiation()
    extended.sop_class_uid, extended.service_class_application_information = CT_CLASSES[0], b"\x01"
    identity = UserIdentityNegotiation()
    identity.user_identity_type, identity.primary_field, identity.positive_response_requested = 1, b"radiology", True
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 5
    ae = pynetdicom.AE(ae_title="PACS")
    ae.add_requested_context(CT_CLASSES[0], "1.2.840.10008.1.2")
    with running_node() as node:
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESEG", ext_neg=[extended, identity, window])
        assert assoc.is_established
        answered = {type(item).__name__ for item in assoc.acceptor.user_information}
        assoc.release()
    assert answered == {"MaximumLengthNotification", "ImplementationClassUIDNotification",
                        "ImplementationVersionNameNotification"}


def test_a_non_ct_image_past_the_one_image_bound_aborts_as_stated(running_node, monkeypatch, caplog):
    """The statement said every other storage class is answered 0x0122; one whose data set is past
    the one-image bound has its association aborted. The bound stated is the node's, the
    statement says it aborts, and it does: with EDGESEG_MAX_PIXELS at 64 x 64 (a bound of 32 KiB
    plus 4 MiB) a 5 MB Parametric Map is aborted, a small one answered 0x0122."""
    from edgeseg.limits import current_limits
    from edgeseg.serve.dicom_peer_bound import data_set_limit

    [value] = [row["value"] for row in statement()["Association limits"] if row["item"].startswith("Data set of one")]
    assert int(ticked(value)) == data_set_limit(current_limits())
    assert "A-ABORT" in value and "not answered 0x0122" in value
    [overview] = [row for row in statement()["1 Overview"] if row["SOP class"].startswith("every other Storage")]
    assert "association aborted" in overview["provider of service (SCP)"]
    monkeypatch.setenv("EDGESEG_MAX_PIXELS", str(64 * 64))
    caplog.set_level(logging.WARNING, logger="edgeseg")
    parametric_map = "1.2.840.10008.5.1.4.1.1.30"

    def image(size: int):
        ds = pydicom.dcmread(sorted(SERIES.glob("*.dcm"))[0])
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = parametric_map
        ds.PixelData = bytes(size)
        return ds

    with running_node(idle=3600) as node:
        ae = pynetdicom.AE(ae_title="PACS")
        ae.add_requested_context(parametric_map, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESEG")
        small = assoc.send_c_store(image(1000)).Status
        large = assoc.send_c_store(image(5_000_000))
    assert small == 0x0122
    assert "Status" not in large  # no answer: the association was aborted
    assert f"a data set of over {data_set_limit(current_limits())} bytes" in caplog.text, caplog.text[-2000:]
