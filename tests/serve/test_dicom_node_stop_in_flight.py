"""A stop that meets images in flight: every image the node acknowledged with Success is in the
SEG the stop makes, and none is stored once the stop has begun.

What a stop did to images being sent (dcmtk's storescu peers, SIGTERM to ``edgeseg listen``): no
image acknowledged with Success was missing from the stop's SEG; images being received when the
connections were cut were stored and segmented without their Success (the peer saw its
association aborted and re-sends them). But an image could still be stored after the stop had
taken the series it segments: an association whose connection was accepted as the accept loop
ended, and set up only once the connections had been cut, was never cut, and its images were
acknowledged while the stop segmented and then removed with the work folder. The node now
refuses every image once the stop has begun (0xA700, "the node is stopping"), and cuts such a
connection as it is set up.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from tests.serve.test_dicom_node import DCMTK, SERIES, _wait_for
from tests.serve.test_dicom_node_durable import _listen, _stop
from tests.serve.test_dicom_node_slow_series import _referenced

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed")


def _series(folder, count: int) -> list:
    """``count`` CT images of one new series, made of the three test slices stacked again and again
    (each its own SOP instance and position)."""
    from pydicom.uid import generate_uid

    folder.mkdir()
    series_uid, files = generate_uid(), []
    sources = sorted(SERIES.glob("*.dcm"))
    first = pydicom.dcmread(sources[0])
    step = float(pydicom.dcmread(sources[1]).ImagePositionPatient[2]) - float(first.ImagePositionPatient[2])
    for index in range(count):
        ds = pydicom.dcmread(sources[index % len(sources)])
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [*list(ds.ImagePositionPatient)[:2], float(first.ImagePositionPatient[2]) + index * step]
        ds.InstanceNumber = index + 1
        ds.save_as(folder / f"{index:03d}.dcm")
        files.append(folder / f"{index:03d}.dcm")
    return files


def _acknowledged(output: str, sop_of: dict) -> set[str]:
    """The SOP instances storescu -v says were answered with Success."""
    acknowledged, sending = set(), None
    for line in output.splitlines():
        sent = re.search(r"Sending file: (\S+)", line)
        if sent:
            sending = sent.group(1)
        elif "Received Store Response (Success)" in line and sending is not None:
            acknowledged.add(sop_of[sending])
    return acknowledged


def _ct_association(port: int):
    """An established pynetdicom association sending CT images to the node on ``port``."""
    ae = pynetdicom.AE(ae_title="CT1")
    ae.add_requested_context(pynetdicom.sop_class.CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGESEG")
    assert assoc.is_established
    return assoc


def test_every_image_acknowledged_before_a_sigterm_is_in_the_seg_the_stop_makes(serve_bundle, tmp_path, free_port,
                                                                              wait_port):
    files = _series(tmp_path / "in", 40)
    sop_of = {str(path): pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in files}
    port = free_port()
    proc = _listen(serve_bundle, port, tmp_path, "--idle", "600", "--max-associations", "20",
                   "--max-connections-per-host", "20")
    peers, acknowledged = [], set()
    try:
        wait_port(port, timeout=60)
        for part in range(0, len(files), 2):  # twenty associations of two images, opened one after another
            peers.append(subprocess.Popen(["storescu", "-v", "-aec", "EDGESEG", "127.0.0.1", str(port),
                                           *map(str, files[part:part + 2])],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            if part == 0:  # the first two acknowledged before the others come
                acknowledged |= _acknowledged(peers[0].communicate(timeout=60)[0], sop_of)
            if part == len(files) // 2:  # half of the others sent or sending
                proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for peer in peers[1:]:
            acknowledged |= _acknowledged(peer.communicate(timeout=60)[0], sop_of)
    assert proc.returncode == 0, err
    assert len(acknowledged) >= 2, err
    segs = sorted((tmp_path / "out").glob("*.seg.dcm"))
    referenced = set().union(*map(_referenced, segs)) if segs else set()
    assert acknowledged <= referenced, (len(acknowledged - referenced), err)


def test_an_image_sent_once_the_stop_has_begun_is_refused_and_not_stored(serve_bundle, tmp_path, free_port,
                                                                        wait_port):
    """The image comes on an association the stop has not cut yet (here: as the stop is about to
    cut the connections); before, it was acknowledged with Success and stored."""
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.dicom_node import DicomNode

    files = sorted(SERIES.glob("*.dcm"))
    statuses = []

    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
        node = DicomNode(segmenter, port=free_port(), out=tmp_path / "out", idle=600)
        node.start()
        wait_port(node.port)
        assoc = _ct_association(node.port)
        assert assoc.send_c_store(pydicom.dcmread(files[0])).Status == 0x0000

        def as_the_cut_comes(frame, event, arg):  # the stop has begun; the connections are cut next
            if event == "call" and frame.f_code.co_name == "close" and "dicom_peer_watch" in frame.f_code.co_filename:
                sys.setprofile(None)
                statuses.append(assoc.send_c_store(pydicom.dcmread(files[1])).Status)

        sys.setprofile(as_the_cut_comes)
        try:
            node.stop()
        finally:
            sys.setprofile(None)
        assert _wait_for(lambda: not assoc.is_alive(), 30)
    assert statuses == [0xA700]
    assert node.stats.received == 1
    segs = sorted((tmp_path / "out").glob("*.seg.dcm"))
    assert [_referenced(seg) for seg in segs] == [{pydicom.dcmread(files[0]).SOPInstanceUID}]
