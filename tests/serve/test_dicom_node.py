"""The DICOM node against dcmtk as the real peer: echoscu, storescu, and storescp receiving the SEG."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest

from edgeseg.serve.dicom_node import DicomNode, Peer
from tests.serve.dcmtk_path import dcmtk_tool

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
DCMTK = all(dcmtk_tool(tool) for tool in ("echoscu", "storescu", "storescp"))  # not pynetdicom's apps
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
# a series is complete IDLE seconds after its last image; the series test sends it in two
# storescu calls, and the second must start and deliver within IDLE of the first, on a busy machine too
IDLE = 4.0


def _wait_for(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def storescp(tmp_path, free_port, wait_port):
    """A dcmtk storescp that stores what it receives under tmp_path/received."""
    received = tmp_path / "received"
    received.mkdir()
    port = free_port()
    proc = subprocess.Popen(["storescp", "-aet", "ARCHIVE", "-od", str(received), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_port(port)
    yield Peer("127.0.0.1", port, "ARCHIVE"), received
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def node(serve_bundle, tmp_path, storescp, free_port, wait_port):
    from edgeseg.runtime.segmenter import Segmenter

    peer, _ = storescp
    segmenter = Segmenter.load(serve_bundle, backend="onnxruntime:fp32")
    dicom_node = DicomNode(segmenter, ae_title="EDGESEG", port=free_port(), out=tmp_path / "out", forward=peer,
                           idle=IDLE, work=tmp_path / "work")
    dicom_node.start()
    wait_port(dicom_node.port)
    yield dicom_node
    dicom_node.stop()
    segmenter.close()


def _storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-v", "-aec", "EDGESEG", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def test_echo_succeeds(node):
    done = subprocess.run(["echoscu", "-aec", "EDGESEG", "127.0.0.1", str(node.port)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_series_is_segmented_once_complete_and_seg_is_forwarded(node, storescp, tmp_path):
    _, received = storescp
    files = sorted(SERIES.glob("*.dcm"))
    first = _storescu(node.port, files[:2])
    assert first.returncode == 0, first.stderr
    time.sleep(IDLE / 4)
    # a half-sent series (the scanner is still sending) is not segmented early
    assert node.stats.segmented == []
    second = _storescu(node.port, files[2:])
    assert second.returncode == 0, second.stderr
    assert _wait_for(lambda: len(node.stats.forwarded) == 1), (node.stats, first.stderr)
    source = pydicom.dcmread(files[0])
    segs = list((tmp_path / "out").glob("*.seg.dcm"))
    assert [p.name for p in segs] == [f"{source.SeriesInstanceUID}.seg.dcm"]
    forwarded = [pydicom.dcmread(p) for p in received.iterdir()]
    assert len(forwarded) == 1
    seg = forwarded[0]
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SOPInstanceUID == pydicom.dcmread(segs[0]).SOPInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert node.stats.segmented == [source.SeriesInstanceUID]


def test_mr_image_is_refused(node, tmp_path):
    ds = pydicom.dcmread(sorted(SERIES.glob("*.dcm"))[0])
    mr_storage = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPClassUID = mr_storage
    ds.file_meta.MediaStorageSOPClassUID = mr_storage
    ds.Modality = "MR"
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    path = tmp_path / "mr.dcm"
    ds.save_as(path)
    done = _storescu(node.port, [path])
    assert "Received Store Response (Refused: SOPClassNotSupported)" in done.stderr
    assert node.stats.refused == 1 and node.stats.received == 0
    time.sleep(IDLE + 0.5)
    assert node.stats.segmented == []


# The UID is malformed on purpose; pydicom warns about it while the test builds the dataset.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_malformed_uid_never_reaches_the_file_system(node, tmp_path):
    ds = pydicom.dcmread(sorted(SERIES.glob("*.dcm"))[0])
    ds.SeriesInstanceUID = "../../escape"
    path = tmp_path / "bad.dcm"
    ds.save_as(path)
    done = _storescu(node.port, [path])
    assert "Received Store Response (Error: DataSetDoesNotMatchSOPClass" in done.stderr or "0xa900" in done.stderr.lower()
    assert node.stats.refused == 1 and node.stats.received == 0
    assert not (tmp_path / "escape").exists() and not list(node.work.rglob("*.dcm"))


def test_forward_and_node_arguments_are_checked(serve_bundle):
    from edgeseg.errors import DataError

    with pytest.raises(DataError, match="HOST:PORT:AET"):
        Peer.parse("localhost:104")
    with pytest.raises(DataError, match="--out, --forward or both"):
        DicomNode(object(), out=None, forward=None)


def test_wrong_called_ae_title_is_rejected(node, caplog):
    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    done = subprocess.run(["echoscu", "-aet", "MODALITY", "-aec", "SOMEONE", "127.0.0.1", str(node.port)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "Called AE Title Not Recognized" in done.stderr
    assert node.stats.rejected_associations == 1
    # the log names the title the peer called, not this node's own
    rejected = [r.getMessage() for r in caplog.records if "rejected an association" in r.getMessage()]
    assert len(rejected) == 1 and "from MODALITY " in rejected[0] and rejected[0].endswith("calling 'SOMEONE'")
    files = sorted(SERIES.glob("*.dcm"))[:1]
    stored = subprocess.run(["storescu", "-aec", "OTHER", "127.0.0.1", str(node.port), *map(str, files)],
                            capture_output=True, text=True, timeout=60)
    assert "Called AE Title Not Recognized" in stored.stderr
    assert node.stats.received == 0


@pytest.fixture
def open_node(serve_bundle, tmp_path, free_port, wait_port):
    from edgeseg.runtime.segmenter import Segmenter

    segmenter = Segmenter.load(serve_bundle, backend="onnxruntime:fp32")
    dicom_node = DicomNode(segmenter, ae_title="EDGESEG", port=free_port(), out=tmp_path / "out", idle=60,
                           work=tmp_path / "work", any_ae=True, calling_aets=["SCANNER1", "SCANNER2"])
    dicom_node.start()
    wait_port(dicom_node.port)
    yield dicom_node
    dicom_node.stop()
    segmenter.close()


def test_any_ae_accepts_any_called_title_but_only_listed_callers(open_node):
    def echo(calling: str, called: str) -> subprocess.CompletedProcess:
        return subprocess.run(["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(open_node.port)],
                              capture_output=True, text=True, timeout=30)

    assert echo("SCANNER2", "WHATEVER").returncode == 0
    refused = echo("LAPTOP", "EDGESEG")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr
    assert open_node.stats.rejected_associations == 1


@pytest.mark.parametrize("title", ["", "X" * 17, "   ", "A\\B", "ÄRZT"])
def test_bad_ae_titles_are_refused(title):
    from edgeseg.errors import DataError

    with pytest.raises(DataError, match="AE title must be 1..16 printable ASCII"):
        DicomNode(object(), ae_title=title, out="x")
    with pytest.raises(DataError, match="AE title must be"):
        DicomNode(object(), out="x", calling_aets=["OK", title])


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_listen_removes_its_work_folder_on_signal(serve_bundle, tmp_path, free_port, wait_port, signum):
    import os
    import signal
    import sys

    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "listen", str(serve_bundle), "--port", str(port),
                             "--out", str(tmp_path / "out"), "--idle", "600", "--backend", "onnxruntime:fp32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_port(port, timeout=60)
        stored = _storescu(port, sorted(SERIES.glob("*.dcm"))[:2])
        assert stored.returncode == 0, stored.stderr
        work = list(tmp_path.glob("edgeseg-listen-*"))
        assert len(work) == 1 and len(list(work[0].rglob("*.dcm"))) == 2  # received, waiting for the series to end
        proc.send_signal(getattr(signal, signum))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert not list(tmp_path.glob("edgeseg-listen-*"))
    assert "Traceback" not in err
    # the two images were acknowledged: the stop segments them rather than dropping them
    [seg] = (tmp_path / "out").glob("*.seg.dcm")
    referenced = pydicom.dcmread(seg).ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert len(referenced) == 2 and "segmenting the 1 series received and not yet segmented" in err


@pytest.mark.parametrize(("options", "called"), [((), "called AE title EDGESEG only"),
                                                  (("--any-ae",), "any called AE title")])
def test_listen_says_where_it_listens_in_one_line(serve_bundle, tmp_path, free_port, wait_port, options, called):
    """It said it twice: a log line "listening as EDGESEG on HOST:PORT" and the line "DICOM node
    EDGESEG on HOST:PORT (called AE title ...; backend ...)"."""
    import signal

    from tests.serve.test_dicom_node_hostile import start_listen

    port = free_port()
    proc = start_listen(serve_bundle, port, tmp_path, *options)
    try:
        wait_port(port, timeout=60)
        first = proc.stdout.readline()  # a Ctrl-C before this line interrupts the start (exit 130)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = first + out
    assert "Traceback" not in err, err
    started = [line for line in (out + err).splitlines() if f":{port}" in line]
    assert started == [f"DICOM node EDGESEG listening on 127.0.0.1:{port} ({called}; backend onnxruntime:fp32); "
                       "Ctrl-C stops it"], out + err


class _HeldSegmenter:
    """A real Segmenter whose first predict_volume waits until the test lets it go, so that images
    can arrive while a series is being segmented."""

    def __init__(self, segmenter) -> None:
        import threading

        self._segmenter, self.started, self.go = segmenter, threading.Event(), threading.Event()
        self.labels = segmenter.labels

    def __getattr__(self, name):  # the rest (runner, manifest, ...: the SEG's provenance) is the real one's
        return getattr(self._segmenter, name)

    def predict_volume(self, volume):
        self.started.set()
        assert self.go.wait(60)
        return self._segmenter.predict_volume(volume)


def test_images_arriving_while_their_series_is_segmented_are_kept(serve_bundle, tmp_path, free_port, wait_port):
    """The third image of a series comes while its first two are segmented: it is neither written
    into the folder being read nor removed with it, and the second SEG, beside the first, is one of
    the whole series."""
    from edgeseg.runtime.segmenter import Segmenter

    files = sorted(SERIES.glob("*.dcm"))
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as real:
        held = _HeldSegmenter(real)
        # The test says when the series is complete, not the machine's speed: with a short idle a
        # loaded machine could take longer than it between the two images of one storescu call,
        # and the series was segmented in two parts. The node reads its idle at each check.
        node = DicomNode(held, port=free_port(), out=tmp_path / "out", idle=600, work=tmp_path / "work")
        node.start()
        try:
            wait_port(node.port)
            assert _storescu(node.port, files[:2]).returncode == 0
            node.idle = 0  # complete now; the worker then waits in the held segmenter until `go`
            assert held.started.wait(30)
            assert _storescu(node.port, files[2:]).returncode == 0  # acknowledged mid-segmentation
            held.go.set()
            assert _wait_for(lambda: len(node.stats.segmented) == 2), node.stats
        finally:
            node.stop()
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    segs = {p.name: p for p in (tmp_path / "out").iterdir()}
    assert sorted(segs) == [f"{uid}-2.seg.dcm", f"{uid}.seg.dcm"]
    covered = [{i.ReferencedSOPInstanceUID for i in pydicom.dcmread(segs[name]).ReferencedSeriesSequence[0]
                .ReferencedInstanceSequence} for name in (f"{uid}.seg.dcm", f"{uid}-2.seg.dcm")]
    sops = [pydicom.dcmread(f).SOPInstanceUID for f in files]
    assert covered == [set(sops[:2]), set(sops)]  # every acknowledged image is in the last SEG
    assert node.stats.failed == []


def test_an_idle_association_does_not_hold_up_the_stop(serve_bundle, tmp_path, free_port, wait_port):
    """A peer that keeps an association open and sends nothing: stop() aborts it rather than
    waiting for the network timeout (a service manager would kill the node first)."""
    import pynetdicom

    from edgeseg.runtime.segmenter import Segmenter

    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
        node = DicomNode(segmenter, port=free_port(), out=tmp_path / "out", idle=0.5, work=tmp_path / "work")
        node.start()
        wait_port(node.port)
        peer = pynetdicom.AE(ae_title="IDLE")
        peer.add_requested_context(pynetdicom.sop_class.Verification)
        assoc = peer.associate("127.0.0.1", node.port, ae_title="EDGESEG")
        assert assoc.is_established
        started = time.monotonic()
        node.stop()
        stopped_after = time.monotonic() - started
    assert stopped_after < 20, f"stop waited {stopped_after:.0f} s for an idle association"
    assert _wait_for(lambda: not assoc.is_established, 10)


def forced_stop(serve_bundle, tmp_path, free_port, wait_port, **options) -> DicomNode:
    """A node (``options``: DicomNode's) that received two series of three images, stopped with a
    second interrupt (abandon) while the stop segments the first: the node, stopped."""
    import threading

    from edgeseg.runtime.segmenter import Segmenter

    files = sorted(SERIES.glob("*.dcm"))
    other = tmp_path / "other"
    other.mkdir()
    for path in files:  # the same images as a second series
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".2"
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"
        ds.save_as(other / path.name)
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as real:
        held = _HeldSegmenter(real)
        node = DicomNode(held, port=free_port(), out=tmp_path / "out", idle=600, **options)
        node.start()
        wait_port(node.port)
        assert _storescu(node.port, files).returncode == 0
        assert _storescu(node.port, sorted(other.iterdir())).returncode == 0
        stopping = threading.Thread(target=node.stop)
        stopping.start()
        assert held.started.wait(30)  # the stop is segmenting the first series
        node.abandon()
        held.go.set()
        stopping.join(60)
        assert not stopping.is_alive()
    return node


def test_a_forced_stop_segments_no_more_series_and_says_which(serve_bundle, tmp_path, free_port, wait_port):
    """A stop segments the series waiting; a second interrupt (abandon) lets the one in progress
    finish and leaves the others, each logged as not segmented, instead of holding the stop up."""
    node = forced_stop(serve_bundle, tmp_path, free_port, wait_port, work=tmp_path / "work")
    files = sorted(SERIES.glob("*.dcm"))
    assert len(node.stats.segmented) == 1 and len(node.stats.failed) == 1
    assert set(node.stats.segmented + node.stats.failed) == {pydicom.dcmread(files[0]).SeriesInstanceUID,
                                                            pydicom.dcmread(files[0]).SeriesInstanceUID + ".2"}
    assert len(list((tmp_path / "out").glob("*.seg.dcm"))) == 1


def test_images_past_the_volume_limit_are_refused_as_they_arrive(serve_bundle, tmp_path, free_port, wait_port,
                                                                 monkeypatch):
    """The readers' volume limit bounds what one series may put on disk: a peer sending image
    after image was stored without end, and the series refused only once it was read."""
    from edgeseg.runtime.segmenter import Segmenter

    files = sorted(SERIES.glob("*.dcm"))
    rows, columns = (int(pydicom.dcmread(files[0]).get(tag)) for tag in ("Rows", "Columns"))
    monkeypatch.setenv("EDGESEG_MAX_VOLUME_BYTES", str(2 * rows * columns * 4))  # two slices of float32 HU
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
        node = DicomNode(segmenter, port=free_port(), out=tmp_path / "out", idle=60, work=tmp_path / "work")
        node.start()
        try:
            wait_port(node.port)
            done = _storescu(node.port, files)
            stored = sorted(p.name for p in node.work.rglob("*.dcm"))
            # a peer re-sending the two images it stored (a PACS retry) replaces them: they were
            # counted again and refused as if the series had grown to four slices
            again = _storescu(node.port, files[:2])
        finally:
            node.stop()
    assert len(files) == 3 and done.stderr.count("Refused: OutOfResources") == 1, done.stderr
    assert "Refused" not in again.stderr and again.returncode == 0, again.stderr
    assert node.stats.received == 4 and node.stats.refused == 1 and len(stored) == 2
