"""A sender that pauses inside a series (a scanner sending slices as it reconstructs them, a busy
network, a store-and-forward router sending in bursts), against dcmtk's storescu: the series is
segmented once, whole, not split at the pause."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import pytest

from edgeseg.serve.dicom_node import DicomNode
from tests.serve.dicom_relay import PausingRelay
from tests.serve.test_dicom_node import DCMTK, SERIES, _storescu, _wait_for

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")

IDLE = 1.0  # short on purpose: the pauses below are longer


def _referenced(seg) -> set[str]:
    return {item.ReferencedSOPInstanceUID for item in
            pydicom.dcmread(seg).ReferencedSeriesSequence[0].ReferencedInstanceSequence}


@contextlib.contextmanager
def _running(serve_bundle, tmp_path, free_port, wait_port, **options):
    """A node on a real Segmenter writing SEGs to tmp_path/out, stopped on leaving."""
    from edgeseg.runtime.segmenter import Segmenter

    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
        dicom_node = DicomNode(segmenter, port=free_port(), out=tmp_path / "out", idle=IDLE, work=tmp_path / "work",
                               **options)
        dicom_node.start()
        try:
            wait_port(dicom_node.port)
            yield dicom_node
        finally:
            dicom_node.stop()


@pytest.fixture
def node(serve_bundle, tmp_path, free_port, wait_port):
    with _running(serve_bundle, tmp_path, free_port, wait_port) as dicom_node:
        yield dicom_node


def test_a_pause_inside_an_association_does_not_split_the_series(node, tmp_path, free_port):
    """storescu sends three slices in one association and the network holds the answer to the
    first for several times --idle: the series was complete at the pause, and its first slice
    became a SEG of its own ("1 slice of 3"), the other two a second one."""
    files = sorted(SERIES.glob("*.dcm"))
    relay = PausingRelay(free_port(), node.port)
    try:
        sending = subprocess.Popen(["storescu", "-aec", "EDGESEG", "127.0.0.1", str(relay.port), *map(str, files)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert _wait_for(lambda: node.stats.received == 1)  # the first slice is in; its answer is held
        time.sleep(4 * IDLE)  # the pause: the association is open and silent
        relay.gate.set()
        _, err = sending.communicate(timeout=120)
        assert sending.returncode == 0, err
        assert _wait_for(lambda: len(node.stats.segmented) >= 1, 60), node.stats
    finally:
        relay.close()
    node.stop()  # whatever is left is segmented now: a second part would show
    segs = sorted((tmp_path / "out").glob("*.seg.dcm"))
    assert [p.name for p in segs] == [f"{pydicom.dcmread(files[0]).SeriesInstanceUID}.seg.dcm"], node.stats
    assert _referenced(segs[0]) == {pydicom.dcmread(f).SOPInstanceUID for f in files}


def test_late_images_are_segmented_with_the_series_into_a_seg_that_replaces_the_first(serve_bundle, tmp_path,
                                                                                       free_port, wait_port):
    """A sender pausing longer than --idle between two associations of one series: the first part
    is segmented at the pause. The second part made a SEG of its own slices alone; now the whole
    series is segmented again, into the series of the first SEG with the next Instance Number,
    and the log and the audit line say which SEG it replaces."""
    import json

    from edgeseg.serve.audit import AuditLog

    files = sorted(SERIES.glob("*.dcm"))
    audit = AuditLog(tmp_path / "audit.jsonl")
    with _running(serve_bundle, tmp_path, free_port, wait_port, audit=audit) as node:
        assert _storescu(node.port, files[:1]).returncode == 0
        assert _wait_for(lambda: len(node.stats.segmented) == 1, 60), node.stats  # the pause outlasted --idle
        assert _storescu(node.port, files[1:]).returncode == 0
        assert _wait_for(lambda: len(node.stats.segmented) == 2, 60), node.stats
    audit.close()
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    first, second = (pydicom.dcmread(tmp_path / "out" / name) for name in (f"{uid}.seg.dcm", f"{uid}-2.seg.dcm"))
    assert _referenced(tmp_path / "out" / f"{uid}-2.seg.dcm") == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    assert (int(first.InstanceNumber), int(second.InstanceNumber)) == (1, 2)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    series = [line for line in lines if line["event"] == "series"]
    assert [(line["slices"], line.get("replaces")) for line in series] == [(1, None), (3, first.SOPInstanceUID)]
    assert not list((tmp_path / "work").iterdir())  # the stop leaves no image behind


def _held(work: Path) -> list[str]:
    """What a running node holds in ``work``, its ``received`` folder (Enhanced CT files in
    flight, none here) left out."""
    return sorted(p.name for p in work.iterdir() if p.name != "received")


def test_keep_segmented_0_leaves_late_images_a_seg_of_their_own(serve_bundle, tmp_path, free_port, wait_port):
    """--keep-segmented 0: nothing is kept, the late part is segmented alone, as before."""
    files = sorted(SERIES.glob("*.dcm"))
    with _running(serve_bundle, tmp_path, free_port, wait_port, keep_segmented=0) as node:
        assert _storescu(node.port, files[:1]).returncode == 0
        assert _wait_for(lambda: len(node.stats.segmented) == 1, 60), node.stats
        assert _wait_for(lambda: not _held(tmp_path / "work"))  # its images are not kept
        assert _storescu(node.port, files[1:]).returncode == 0
        assert _wait_for(lambda: len(node.stats.segmented) == 2, 60), node.stats
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert _referenced(tmp_path / "out" / f"{uid}-2.seg.dcm") == {pydicom.dcmread(f).SOPInstanceUID for f in files[1:]}


def test_a_kept_series_gives_its_room_to_a_new_one(serve_bundle, tmp_path, free_port, wait_port):
    """With --max-series 1 the images kept of a segmented series must not turn the next series
    away: they are given up for it, so the work folder never holds more than --max-series series."""
    files = sorted(SERIES.glob("*.dcm"))
    other = tmp_path / "other"
    other.mkdir()
    for path in files:  # the same images as a second series
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = ds.SeriesInstanceUID + ".2", ds.SOPInstanceUID + ".2"
        ds.save_as(other / path.name)
    with _running(serve_bundle, tmp_path, free_port, wait_port, max_series=1) as node:
        assert _storescu(node.port, files).returncode == 0
        assert _wait_for(lambda: _held(tmp_path / "work")
                         == [f"{pydicom.dcmread(files[0]).SeriesInstanceUID}.segmented"], 60)  # kept
        done = _storescu(node.port, sorted(other.iterdir()))
        held = _held(tmp_path / "work")
    assert done.returncode == 0 and "Refused" not in done.stderr, done.stderr
    assert node.stats.refused == 0
    # the second series alone (received, being segmented or kept): the first one's images are gone
    assert len(held) == 1 and held[0].startswith(pydicom.dcmread(files[0]).SeriesInstanceUID + ".2"), held
