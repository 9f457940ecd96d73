"""The SEG sent to the forward peer, against a pynetdicom SCP answering with each kind of
C-STORE status: what the node counts as stored follows PS3.4 B.2.3 (Success and the Warnings:
the instance is kept), and the association names edgeseg, not the library it is built on."""

from __future__ import annotations

import pytest

from edgeseg.errors import DataError
from edgeseg.serve.dicom_forward import Peer, SegRefused, UnsentFolder, send_seg
from edgeseg.serve.dicom_identity import IMPLEMENTATION_CLASS_UID, implementation_version_name

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")

SEG = pytest.importorskip("tests.serve.test_dicom_node").SERIES.parent / "liver.dcm"


@pytest.fixture
def archive(free_port):
    """``archive(status)``: a pynetdicom Storage SCP answering every C-STORE with ``status``;
    returns its Peer and the list of (requestor's implementation class UID, version name, SOP
    instance UID) of each C-STORE it got."""
    servers, seen = [], []

    def start(status: int):
        def on_store(event):
            requestor = event.assoc.requestor
            seen.append((requestor.implementation_class_uid, requestor.implementation_version_name,
                         event.dataset.SOPInstanceUID))
            return status

        ae = pynetdicom.AE(ae_title="ARCHIVE")
        ae.add_supported_context("1.2.840.10008.5.1.4.1.1.66.4")
        port = free_port()
        servers.append(ae.start_server(("127.0.0.1", port), block=False,
                                       evt_handlers=[(pynetdicom.evt.EVT_C_STORE, on_store)]))
        return Peer("127.0.0.1", port, "ARCHIVE"), seen

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB006, 0xB007, 0x0001, 0x0107, 0x0116], ids=lambda s: f"0x{s:04X}")
def test_a_seg_the_peer_stored_leaves_the_unsent_folder(archive, tmp_path, status):
    """A Warning (B000 coercion of data elements, ...) says the peer stored the SEG. It was taken
    for a refusal: the SEG stayed in the unsent folder and was stored again at every round."""
    peer, seen = archive(status)
    folder = UnsentFolder(tmp_path / "unsent")
    named = tmp_path / "liver.seg.dcm"  # named as the node names its SEGs
    named.write_bytes(SEG.read_bytes())
    folder.keep(named)
    sent, failure = folder.resend(lambda path: send_seg(peer, "EDGESEG", path))
    assert (sent, failure, folder.pending()) == (1, None, [])
    assert [uid for _, _, uid in seen] == [pydicom.dcmread(SEG).SOPInstanceUID]


@pytest.mark.parametrize("status", [0xA700, 0xA900, 0xC000, 0x0122], ids=lambda s: f"0x{s:04X}")
def test_a_seg_the_peer_refused_stays(archive, tmp_path, status):
    peer, _ = archive(status)
    with pytest.raises(SegRefused, match=f"status 0x{status:04X}"):
        send_seg(peer, "EDGESEG", SEG)


def test_the_forwarding_association_names_edgeseg(archive):
    """pynetdicom's own Implementation Class UID and Version Name (PYNETDICOM_304) went out: the
    archive's log named the library, never edgeseg or its version."""
    peer, seen = archive(0x0000)
    send_seg(peer, "EDGESEG", SEG)
    [(class_uid, version_name, _)] = seen
    assert (class_uid, version_name) == (IMPLEMENTATION_CLASS_UID, implementation_version_name())
    assert version_name.startswith("EDGESEG_")


@pytest.mark.parametrize("version, name", [("0.1.0", "EDGESEG_0.1.0"), ("0.1.0+g1a2b3c4.d20261207", "EDGESEG_0.1.0"),
                                           ("12.10.3", "EDGESEG_12.10.3"), ("12.10.3.dev45", "ES_12.10.3.dev45"),
                                           ("1.0rc1", "EDGESEG_1.0rc1"), ("2.0\\x", "EDGESEG_2.0_x")])
def test_the_implementation_version_name_keeps_to_the_rules(version, name):
    """PS3.8 D.3.3.2.3: 1 to 16 characters of the default repertoire, no backslash; pynetdicom
    refuses a longer one (a node of a development build would not start). A development build
    names itself apart from its release (``12.10.3.dev45`` was ``EDGESEG_12.10.3``, cut)."""
    made = implementation_version_name(version)
    assert made == name
    assert 1 <= len(made) <= 16 and all(32 < ord(c) < 127 and c != "\\" for c in made)
    pynetdicom.AE().implementation_version_name = made  # pynetdicom's own check takes it


def test_versions_too_long_for_any_prefix_still_name_themselves_apart():
    """Versions past 13 characters keep their first 9 and a hash: still 16 characters, and the
    release, its pre-releases and development builds all named apart."""
    versions = ["123.456.789", "123.456.789rc1", "123.456.789rc1.dev2", "123.456.789rc1.dev3", "123.456.789.post1"]
    names = [implementation_version_name(version) for version in versions]
    assert len(set(names)) == len(versions), names
    assert all(len(name) <= 16 for name in names) and names[0] == "ES_123.456.789"
    for name in names:
        pynetdicom.AE().implementation_version_name = name


def _proposed_syntaxes() -> list[str]:
    from tests.serve.conformance_tables import statement, uids

    [row] = statement()["Presentation contexts proposed"]
    return uids(row["transfer syntaxes"])


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99",
                                    "1.2.840.10008.1.2.2"])
def test_a_peer_accepting_one_syntax_gets_the_seg_in_it_or_refuses_the_association(free_port, syntax):
    """Each syntax the conformance statement says the forwarding proposes, a peer accepting it
    alone gets the SEG in it, its pixel data whole; Explicit VR Big Endian, which pynetdicom cannot
    send the SEG in, was proposed too: the association was made and the C-STORE raised
    pynetdicom's ValueError out of the forwarding (no SEG kept to send again without --out)."""
    got = []

    def on_store(event):
        got.append((str(event.context.transfer_syntax), bytes(event.dataset.PixelData)))
        return 0x0000

    ae = pynetdicom.AE(ae_title="ARCHIVE")
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.66.4", syntax)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(pynetdicom.evt.EVT_C_STORE, on_store)])
    try:
        if syntax in _proposed_syntaxes():
            send_seg(Peer("127.0.0.1", port, "ARCHIVE"), "EDGESEG", SEG)
            assert got == [(syntax, pydicom.dcmread(SEG).PixelData)]
        else:
            with pytest.raises(DataError, match="could not associate"):
                send_seg(Peer("127.0.0.1", port, "ARCHIVE"), "EDGESEG", SEG)
            assert got == []
    finally:
        server.shutdown()


def test_the_statuses_the_statement_calls_stored_are_stored(archive, tmp_path):
    """The Warning row of the statement's "C-STORE statuses received": each status in it leaves
    the SEG out of the unsent folder, as Success does."""
    import re

    from tests.serve.conformance_tables import statement

    [row] = [row for row in statement()["C-STORE statuses received"] if row["status"].endswith("Warning")]
    codes = [int(code, 16) for code in re.findall(r"0x[0-9A-F]{4}", row["status"])]
    assert {0xB000, 0xB006, 0xB007} <= set(codes)
    for code in codes:
        peer, _ = archive(code)
        send_seg(peer, "EDGESEG", SEG)  # raises for a status not taken as stored
