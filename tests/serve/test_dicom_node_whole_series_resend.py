"""A series that failed for a refused image is segmented again only whole.

A PACS retries the instances refused after the association ends, often after the node has
completed and failed their series; that retried slice alone used to open a fresh series with no
notes and be segmented into a SEG of one slice. Now the node remembers the images of the failed
series: a later series of that UID holding them all (a whole re-send) is segmented, one short of
them fails. The notes are bounded in entries, those of series not held expire, and an Enhanced
CT (a whole series in one file) clears its series' notes. Real node on 127.0.0.1, real
pynetdicom senders; the bounds and expiry on RefusedImages itself, with the times given."""

from __future__ import annotations

import logging

import pytest

from edgeseg.serve.dicom_refused import RefusedImages
from tests.serve.test_dicom_node import _wait_for
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture
from tests.serve.test_dicom_node_whole_series import _association, _referenced, _segs, _send, _slices, _without

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def _fail_the_middle(node, datasets) -> None:
    """Send ``datasets`` with the middle one refused, and wait for the series to fail."""
    first, middle, last = datasets
    assoc = _association(node.port)
    assert _send(assoc, [first, _without(middle, "ImagePositionPatient"), last]) == [0, 0xA900, 0]
    assoc.release()
    assert _wait_for(lambda: node.stats.failed.total == 1), node.stats


def test_the_refused_slice_retried_alone_after_the_failure_makes_no_seg(running_node, tmp_path, caplog):
    """The corrected middle slice, sent alone once its series failed, is not segmented alone: it
    fails, the line saying how many images the series had and how many the re-send holds."""
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    datasets = _slices()
    with running_node() as node:
        _fail_the_middle(node, datasets)
        assoc = _association(node.port)
        assert _send(assoc, [datasets[1]]) == [0]
        assoc.release()
        assert _wait_for(lambda: node.stats.failed.total == 2), node.stats
    assert node.stats.segmented == [] and _segs(tmp_path / "out") == []
    line = [r.getMessage() for r in caplog.records if "not segmented" in r.getMessage()][-1]
    assert "when it had 3 images" in line and "holds 1" in line and "send the whole series again" in line, line


def test_the_whole_series_resent_after_the_failure_is_segmented(running_node, tmp_path):
    """The whole series sent again, corrected, after the failure: one SEG of all three slices."""
    datasets = _slices()
    with running_node() as node:
        _fail_the_middle(node, datasets)
        assoc = _association(node.port)
        assert _send(assoc, datasets) == [0, 0, 0]
        assoc.release()
        assert _wait_for(lambda: node.stats.segmented.total == 1), node.stats
    assert node.stats.failed.total == 1
    (seg,) = _segs(tmp_path / "out")
    assert _referenced(seg) == {str(ds.SOPInstanceUID) for ds in datasets}


def test_an_enhanced_ct_clears_the_notes_of_its_series(running_node, tmp_path):
    """A slice of the series refused, then the series sent as one Enhanced CT file: the file holds
    the whole series, so the refusal does not fail it; its SEG is made."""
    from tests.enhanced_ct import read_slices, write_enhanced_ct
    from tests.serve.test_dicom_node import SERIES

    path = tmp_path / "enhanced.dcm"
    write_enhanced_ct(read_slices(SERIES), path, [0, 1, 2])
    enhanced = pydicom.dcmread(path)
    stray = _slices()[0]
    stray.SeriesInstanceUID = enhanced.SeriesInstanceUID
    with running_node() as node:
        assoc = _association(node.port)
        assert _send(assoc, [_without(stray, "ImagePositionPatient")]) == [0xA900]
        assoc.release()
        ae = pynetdicom.AE(ae_title="SENDER")
        ae.add_requested_context(ENHANCED_CT, pydicom.uid.ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESEG")
        assert int(assoc.send_c_store(enhanced).Status) == 0
        assoc.release()
        assert _wait_for(lambda: node.stats.segmented.total == 1), node.stats
    assert node.stats.failed == []


def test_the_named_images_are_bounded_in_all():
    """Past ``most_images`` images named across all series, an image more is noted as its
    series' unnamed refusal: the entries stay bounded, and the series still fails."""
    refused = RefusedImages(most=1000, most_images=50)
    for series in range(100):
        for image in range(100):
            refused.refused(f"1.{series}", f"1.{series}.{image}", "hostile", held={}, now=0.0)
    assert len(refused) <= 50 + 100
    assert refused.outstanding("1.99", now=0.0) is not None
    assert refused.outstanding("1.0", holds=[f"1.0.{i}" for i in range(100)], now=0.0) is not None


def test_the_failed_series_remembered_are_bounded_in_all():
    """The images of failed series remembered stay within ``most_images``, the oldest forgotten."""
    refused = RefusedImages(most=1000, most_images=50)
    for series in range(20):
        refused.refused(f"2.{series}", None, "unreadable", held={}, now=0.0)
        assert refused.outstanding(f"2.{series}", holds=[f"2.{series}.{i}" for i in range(20)], now=0.0)
    assert len(refused) <= 50
    assert refused.outstanding("2.19", holds=["2.19.0"], now=0.0) is not None  # the latest still remembered
    assert refused.outstanding("2.0", holds=["2.0.0"], now=0.0) is None  # the oldest forgotten


def test_the_notes_of_a_series_not_held_expire_and_those_of_a_held_one_do_not():
    refused = RefusedImages(kept_for=100.0)
    refused.refused("3.1", "3.1.1", "stray", held={}, now=0.0)
    refused.refused("3.2", "3.2.1", "held", held={}, now=0.0)
    refused.expire(99.0, held={})
    assert len(refused) == 2
    held = {"3.2": object()}
    refused.expire(100.0, held=held)
    assert len(refused) == 1
    assert refused.outstanding("3.1", now=100.0, held=held) is None  # a legitimate series arriving later is segmented
    assert refused.outstanding("3.2", now=100.0, held=held) is not None  # its own notes stand, however old


def test_a_failed_series_is_forgotten_after_its_time():
    refused = RefusedImages(kept_for=100.0)
    refused.refused("4.1", "4.1.2", "bad", held={}, now=0.0)
    assert refused.outstanding("4.1", holds=["4.1.1", "4.1.3"], now=10.0) is not None
    assert refused.outstanding("4.1", holds=["4.1.2"], now=50.0) is not None  # a lone retry fails
    assert refused.outstanding("4.1", holds=["4.1.2"], now=109.0) is not None
    assert refused.outstanding("4.1", holds=["4.1.2"], now=110.0) is None  # forgotten after the first failure's time


def test_a_retry_loop_does_not_keep_the_series_blocked_past_its_first_failure():
    """A PACS retrying a lone image over and over: each retry fails, but none restarts the clock."""
    refused = RefusedImages(kept_for=100.0)
    refused.refused("6.1", "6.1.2", "bad", held={}, now=0.0)
    assert refused.outstanding("6.1", holds=["6.1.1", "6.1.3"], now=0.0) is not None
    for now in range(5, 100, 5):
        assert refused.outstanding("6.1", holds=["6.1.2"], now=float(now)) is not None
    assert refused.outstanding("6.1", holds=["6.1.2"], now=100.0) is None


def test_a_re_send_under_new_uids_does_not_stop_the_original_series_later():
    """A re-send under new SOP Instance UIDs fails (it misses the first attempt's images) but adds
    nothing to what the series must hold: the original series, corrected and complete, is segmented."""
    refused = RefusedImages()
    refused.refused("7.1", "7.1.2", "bad", held={}, now=0.0)
    assert refused.outstanding("7.1", holds=["7.1.1", "7.1.3"], now=0.0) is not None
    reason = refused.outstanding("7.1", holds=["7.1.7", "7.1.8", "7.1.9"], now=10.0)
    assert reason == ("it failed before for images refused, when it had 3 images; this re-send holds 3 and misses 3 "
                      "of them: send the whole series again, keeping its SOP Instance UIDs")
    assert refused.outstanding("7.1", holds=["7.1.1", "7.1.2"], now=20.0) is not None  # still short of 7.1.3
    assert refused.outstanding("7.1", holds=["7.1.1", "7.1.2", "7.1.3"], now=30.0) is None


def test_an_enhanced_ct_clears_notes_and_failure():
    refused = RefusedImages()
    refused.refused("5.1", None, "unreadable SOP UID", held={}, now=0.0)
    refused.taken("5.1", "5.1.9", whole=True)
    assert refused.outstanding("5.1", holds=["5.1.9"], now=0.0) is None
    refused.refused("5.2", "5.2.1", "bad", held={}, now=0.0)
    assert refused.outstanding("5.2", holds=["5.2.2"], now=0.0) is not None
    refused.taken("5.2", "5.2.9", whole=True)
    assert refused.outstanding("5.2", holds=["5.2.9"], now=0.0) is None
