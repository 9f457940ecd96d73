"""The files an Enhanced CT's data set is received to are the node's: none outlives its connection.

pynetdicom wrote each to ``NamedTemporaryFile`` in TMPDIR and removed it only once the C-STORE
handler had returned. A request pynetdicom refused itself (a C-STORE without its Message ID:
no handler call, a 2 MB file left), data sets still queued when the peer aborted (three sent,
one handled, two files left), a write the disk could not take (pynetdicom's reading thread
died, no close event came, the part written stayed and kept the disk full) and a node killed
outright all left files in TMPDIR for good. The node now receives them into ``received`` in its
work folder, removes what no handler took as the connection closes, and empties the folder as
it starts (edgeseg/serve/dicom_received.py).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path

import pytest

from tests.serve.test_dicom_node import DCMTK
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture
from tests.serve.test_full_disk import _limit, running_listen  # noqa: F401 - the fixture

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
EXPLICIT = "1.2.840.10008.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"


def _request(message_id: int | None, pixel_bytes: int = 2_000_000):
    """A C-STORE request of an Enhanced CT class whose data set is ``pixel_bytes`` of pixel data
    (and no UIDs of its own: the node answers it, if asked, with a failure)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT, generate_uid()
    ds.add_new(0x7FE00010, "OB", b"\0" * pixel_bytes)
    request = C_STORE()
    if message_id is not None:
        request.MessageID = message_id
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = ENHANCED_CT, ds.SOPInstanceUID
    request.DataSet = BytesIO(encode(ds, False, True))
    return request


def _files(*folders: Path) -> list[str]:
    return sorted(str(p) for folder in folders for p in folder.glob("*.dcm"))


def _left_after(folders: tuple[Path, ...], timeout: float = 20) -> list[str]:
    """The data set files in ``folders`` once none is left or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while _files(*folders) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _files(*folders)


@pytest.fixture
def own_tmpdir(tmp_path, monkeypatch) -> Path:
    """TMPDIR of this process (pynetdicom's temporary files), a folder of the test's."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _peer():
    peer = pynetdicom.AE()
    peer.add_requested_context(ENHANCED_CT, EXPLICIT)
    return peer


def test_a_request_pynetdicom_refuses_leaves_no_file(running_node, own_tmpdir):
    """A C-STORE without its Message ID: pynetdicom never calls the handler; its data set file
    (2 MB) stayed in TMPDIR."""
    with running_node(idle=3600) as node:
        assoc = _peer().associate("127.0.0.1", node.port, ae_title="EDGESEG")
        assoc.dimse.send_msg(_request(None), assoc.accepted_contexts[0].context_id)
        assoc.release()
        left = _left_after((own_tmpdir, node.work / "received"))
        receiving_in = (node.work / "received").is_dir()
        node.abandon()
    assert left == []
    assert receiving_in  # where the node receives them while it runs
    assert not (node.work / "received").exists()  # and no more once it has stopped


def test_data_sets_queued_when_the_peer_aborts_leave_no_file(serve_bundle, tmp_path, free_port, wait_port, own_tmpdir):
    """Three C-STOREs sent without waiting, then an A-ABORT while the first is handled: the two
    never handled stayed in TMPDIR."""
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.dicom_node import DicomNode

    entered, go_on = threading.Event(), threading.Event()
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
        node = DicomNode(segmenter, port=free_port(), out=tmp_path / "out", work=tmp_path / "work", idle=3600)
        on_store = node._on_store

        def held(event):  # the first image is handled until the peer has aborted
            entered.set()
            go_on.wait(60)
            return on_store(event)

        node._on_store = held
        node.start()
        try:
            wait_port(node.port)
            assoc = _peer().associate("127.0.0.1", node.port, ae_title="EDGESEG")
            context = assoc.accepted_contexts[0].context_id
            for message_id in (1, 2, 3):
                assoc.dimse.send_msg(_request(message_id), context)
            assert entered.wait(60)
            deadline = time.monotonic() + 30  # the three whole on the node's side
            folders = (own_tmpdir, node.work / "received")
            while (sum(Path(p).stat().st_size for p in _files(*folders)) < 3 * 2_000_000
                   and time.monotonic() < deadline):
                time.sleep(0.1)
            received = len(_files(*folders))
            assoc.abort()
            time.sleep(0.5)  # the abort reaches the node while the first is still handled
            go_on.set()
            left = _left_after(folders)
        finally:
            go_on.set()
            node.abandon()
            node.stop()
    assert received == 3
    assert left == []


def test_files_a_killed_node_left_are_removed_at_the_start(running_node, tmp_path):
    """A node killed outright leaves what it was receiving; the next start removes it."""
    received = tmp_path / "work" / "received"
    received.mkdir(parents=True)
    (received / "tmpcut.dcm").write_bytes(b"\0" * 1000)
    with running_node(idle=3600) as node:
        left = _files(received)
        node.abandon()
    assert node.work / "received" == received
    assert left == []


@pytest.mark.parametrize("kind", ["link", "file"])
def test_a_received_link_or_file_in_the_work_folder_becomes_a_folder_of_its_own(running_node, tmp_path, kind):
    """A ``received`` link to another folder (or a file of that name) in the work folder is
    replaced by a folder: the node neither writes into the link's target nor empties it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.dcm").write_bytes(b"kept")
    received = tmp_path / "work" / "received"
    received.parent.mkdir()
    if kind == "link":
        received.symlink_to(elsewhere, target_is_directory=True)
    else:
        received.write_bytes(b"not a folder")
    with running_node(idle=3600) as node:
        made = received.is_dir() and not received.is_symlink()
        node.abandon()
    assert made and _files(received) == []
    assert [p.name for p in elsewhere.iterdir()] == ["keep.dcm"] and (elsewhere / "keep.dcm").read_bytes() == b"kept"


@pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu) is not installed: apt-get install dcmtk")
def test_an_enhanced_ct_the_disk_cannot_take_is_refused_and_leaves_no_file(running_listen, tmp_path):
    """A write of the received file that fails (a full disk; here the file size limit): it was
    raised in pynetdicom's reading thread, which died; no close event came, the part written
    stayed, and the sender saw its connection dropped. Now the rest is dropped, the file removed,
    the image answered 0xA700, and the next Enhanced CT, with room again, is stored."""
    from tests.serve.test_dicom_node_enhanced_ct_concurrent import _enhanced_ct_files, _send_all

    sent = tmp_path / "sent"
    sent.mkdir()
    first, second = _enhanced_ct_files(sent, 2, 8)  # 4 MB each
    with running_listen() as proc:
        _limit(proc, 1_000_000)
        [refused] = _send_all(running_listen.port, [first])
        [work] = (tmp_path / "tmp").glob("edgeseg-listen-*")
        left = _left_after((tmp_path / "tmp", work / "received"), timeout=5)
        _limit(proc, resource.RLIM_INFINITY)
        [stored] = _send_all(running_listen.port, [second])
    assert left == []
    assert "Received Store Response (Out of Resources" in refused or "OutOfResources" in refused, refused[-2000:]
    assert "Received Store Response (Success)" in stored, stored[-2000:]
    log = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in log
    assert f"cannot receive it into {work / 'received'}: File too large" in log, log[-2000:]


def _data_set(pixel_bytes: int):
    """An Enhanced CT data set of ``pixel_bytes`` of pixel data, for ``send_c_store``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT, generate_uid()
    ds.add_new(0x7FE00010, "OB", b"\0" * pixel_bytes)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    return ds


def _open_descriptors(pid: int) -> set[int]:
    return {int(name) for name in os.listdir(f"/proc/{pid}/fd")}


@pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu) is not installed: apt-get install dcmtk")
def test_a_received_file_that_cannot_be_made_is_refused_and_the_association_goes_on(running_listen, tmp_path):
    """``edgeseg listen`` out of descriptors (its RLIMIT_NOFILE lowered to its lowest free one) as
    an Enhanced CT's data set comes: making its file raised in pynetdicom's reading thread, which
    died; the sender got no answer. Now it is answered 0xA700 with one log line, and the
    association answers a C-ECHO next."""
    with running_listen() as proc:
        peer = _peer()
        peer.add_requested_context(VERIFICATION)
        assoc = peer.associate("127.0.0.1", running_listen.port, ae_title="EDGESEG")
        assoc.dimse_timeout = 30
        assert assoc.is_established
        held = _open_descriptors(proc.pid)
        lowest_free = min(set(range(max(held) + 2)) - held)
        _, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
        first = assoc.send_c_store(_data_set(200_000))
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (hard, hard))
        echo = assoc.send_c_echo()
        assoc.release()
        [work] = (tmp_path / "tmp").glob("edgeseg-listen-*")
        left = _left_after((work / "received",), timeout=5)
    assert first.get("Status") == 0xA700
    # the sender reads why: the system's reason, not a guess at a full disk
    assert str(first.get("ErrorComment", "")).startswith("cannot receive it: "), first
    assert "Too many open files" in str(first.get("ErrorComment", "")), first
    assert echo.get("Status") == 0x0000  # the association still reads and answers
    assert left == []
    log = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in log and "DT-2" not in log
    assert f"cannot receive it into {work / 'received'}: Too many open files" in log, log[-2000:]


def test_files_a_failing_handler_had_are_closed(serve_bundle, tmp_path, free_port, wait_port):
    """The C-STORE handler raising (answered 0xC211): its received file was removed but
    left open, one descriptor held per image for the life of the association."""
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.dicom_node import DicomNode

    def failing(event):
        raise RuntimeError("the handler failed")

    images = 8
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
        node = DicomNode(segmenter, port=free_port(), out=tmp_path / "out", work=tmp_path / "work", idle=3600)
        node._on_store = failing
        node.start()
        try:
            wait_port(node.port)
            assoc = _peer().associate("127.0.0.1", node.port, ae_title="EDGESEG")
            assoc.dimse_timeout = 60
            first = assoc.send_c_store(_data_set(200_000))
            statuses = [first.get("Status")]
            before = _open_descriptors(os.getpid())
            statuses += [assoc.send_c_store(_data_set(200_000)).get("Status") for _ in range(images - 1)]
            grown = _open_descriptors(os.getpid()) - before
            assoc.release()
            left = _files(node.work / "received")
        finally:
            node.abandon()
            node.stop()
    assert statuses == [0xC211] * images
    # with an Error Comment, as every failure but 0x0122 (pynetdicom's own 0xC211 had none)
    assert first.get("ErrorComment") == "the node failed storing it (see its log)"
    assert len(grown) < images // 2, sorted(grown)
    assert left == []


WITHOUT_NAME = """
import sys
import pynetdicom.dimse_messages
del pynetdicom.dimse_messages.NamedTemporaryFile  # as a pynetdicom that no longer uses it would be
sys.argv[0] = "edgeseg"
from edgeseg.cli.main import cli
cli()
"""


# pynetdicom 1.5 as the node meets it: neither name, and the Verification class under its old name
# (what `edgeseg listen` did with pynetdicom 1.5.7 installed: an AttributeError traceback on
# sop_class.Verification, before the check of the two names was reached)
BEFORE_2 = WITHOUT_NAME.replace("import sys\n", """import sys
import pynetdicom._config, pynetdicom.sop_class
del pynetdicom._config.STORE_RECV_CHUNKED_DATASET
pynetdicom.sop_class.VerificationSOPClass = pynetdicom.sop_class.Verification
del pynetdicom.sop_class.Verification
""")


@pytest.mark.parametrize("script, missing", [(WITHOUT_NAME, "NamedTemporaryFile"),
                                             (BEFORE_2, "STORE_RECV_CHUNKED_DATASET, NamedTemporaryFile")],
                         ids=["without-NamedTemporaryFile", "before-2.0"])
def test_a_pynetdicom_without_the_receive_path_the_node_takes_over_is_refused_in_one_line(serve_bundle, tmp_path,
                                                                                        free_port, script, missing):
    """The node takes over pynetdicom's ``NamedTemporaryFile`` and ``STORE_RECV_CHUNKED_DATASET``
    (2.0 to 3.0); a release without them made ``edgeseg listen`` end in an AttributeError
    traceback. Now one line naming the version, a non-zero exit and no folder left in TMPDIR."""
    (tmp_path / "tmp").mkdir()
    done = subprocess.run([sys.executable, "-c", script, "listen", str(serve_bundle), "--port",
                           str(free_port()), "--out", str(tmp_path / "out"), "--backend", "onnxruntime:fp32"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TMPDIR=str(tmp_path / "tmp"), OMP_NUM_THREADS="1"))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("edgeseg: error:")]
    assert errors == [f"edgeseg: error: pynetdicom {pynetdicom.__version__} has no {missing}, which the "
                      "node receives Enhanced CT into files with; install edgeseg[dicom]'s pynetdicom (>=3.0)"], done.stderr
    assert "listening on" not in done.stdout
    assert list((tmp_path / "tmp").iterdir()) == []
