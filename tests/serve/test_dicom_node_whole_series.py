"""A series of which the DICOM node refused an image is not segmented from the images it took.

The node answers image by image and the association stays up after a refusal, so a sender that
goes on past a refused slice left the node with the others; once the series completed it used to
segment them into a SEG that silently missed the refused slice (a 3-slice series whose middle
slice was refused became a 2-slice SEG, the two left around it even evenly spaced), where
``edgeseg predict`` of the same folder refuses the whole series. Now the series fails, in its
log line and the audit log, naming the refusal, unless the refused image was taken since (sent
again, corrected). Real node on 127.0.0.1, real pynetdicom senders."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

from edgeseg.serve.audit import AuditLog
from tests.serve.test_dicom_node import SERIES, _wait_for
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")

CT = "1.2.840.10008.5.1.4.1.1.2"


def _slices() -> list:
    """The test series (3 slices) with UIDs of its own, in the order of their files."""
    from pydicom.uid import generate_uid

    datasets = [pydicom.dcmread(path) for path in sorted(SERIES.glob("*.dcm"))]
    series = generate_uid()
    for ds in datasets:
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return datasets


def _association(port: int):
    ae = pynetdicom.AE(ae_title="SENDER")
    ae.add_requested_context(CT, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGESEG")
    assert assoc.is_established
    return assoc


def _send(assoc, datasets) -> list[int]:
    """The C-STORE status of each of ``datasets``, sent in order on ``assoc``, going on past a refusal."""
    return [int(assoc.send_c_store(ds).Status) for ds in datasets]


def _without(ds, tag: str):
    bad = copy.deepcopy(ds)
    delattr(bad, tag)
    return bad


def _segs(out: Path) -> list[Path]:
    return sorted(out.glob("*.seg.dcm")) if out.is_dir() else []


def _referenced(seg: Path) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID)
            for item in pydicom.dcmread(seg).ReferencedSeriesSequence[0].ReferencedInstanceSequence}


def _failed_series(node, tmp_path: Path, caplog, uid: str) -> tuple[str, dict]:
    """The log line and the audit line of ``uid``, failed, after checking that no SEG was written
    and none of its images is left in the work folder."""
    assert _wait_for(lambda: node.stats.failed.total == 1), node.stats
    assert node.stats.segmented == [] and _segs(tmp_path / "out") == []
    # the node counts the failure first, then audits it and clears its images: wait for those too
    assert _wait_for(lambda: not [p for p in (tmp_path / "work").iterdir() if p.name.startswith(uid)]), \
        sorted(p.name for p in (tmp_path / "work").iterdir())
    assert _wait_for(lambda: uid in (tmp_path / "audit.jsonl").read_text())
    (line,) = [r.getMessage() for r in caplog.records if "not segmented" in r.getMessage()]
    audit = [json.loads(text) for text in (tmp_path / "audit.jsonl").read_text().splitlines()]
    (record,) = [a for a in audit if a.get("series_uid") == uid]
    return line, record


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    yield log
    log.close()


def test_a_refused_middle_slice_fails_the_series(running_node, tmp_path, caplog, audit):
    """(a) The middle slice lacks ImagePositionPatient: refused, the other two taken; the series
    is not segmented into a SEG of two slices: it fails, naming the refusal."""
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    first, middle, last = _slices()
    with running_node(audit=audit) as node:
        assoc = _association(node.port)
        assert _send(assoc, [first, _without(middle, "ImagePositionPatient"), last]) == [0, 0xA900, 0]
        assoc.release()
        line, record = _failed_series(node, tmp_path, caplog, first.SeriesInstanceUID)
    assert "1 image of it refused on arrival" in line and "ImagePositionPatient" in line, line
    assert record["outcome"] == "failed" and "ImagePositionPatient" in record["error"], record


def test_a_refused_slice_sent_again_corrected_is_segmented_with_the_rest(running_node, tmp_path):
    """(b) The refused slice sent again, corrected, in the same association and in another one
    before the series completes: it is no more outstanding, and the SEG is of all three slices."""
    series = [_slices(), _slices()]
    with running_node() as node:
        sending = [_association(node.port) for _ in series]
        for assoc, (first, middle, last) in zip(sending, series):
            assert _send(assoc, [first, _without(middle, "ImagePositionPatient"), last]) == [0, 0xA900, 0]
        assert _send(sending[0], [series[0][1]]) == [0]  # the first series' slice, in the same association
        other = _association(node.port)  # the second's, in another while the first still sends its series
        assert _send(other, [series[1][1]]) == [0]
        for assoc in (other, *sending):
            assoc.release()
        assert _wait_for(lambda: node.stats.segmented.total == 2), node.stats
    assert node.stats.failed == []
    for datasets in series:
        seg = tmp_path / "out" / f"{datasets[0].SeriesInstanceUID}.seg.dcm"
        assert _referenced(seg) == {str(ds.SOPInstanceUID) for ds in datasets}


def test_a_slice_reusing_the_sop_uid_of_another_fails_the_series(running_node, tmp_path, caplog, audit):
    """(c) The middle slice carries the first one's SOP Instance UID at its own position: refused
    (it would replace the first), and the series fails rather than becoming a SEG of two slices;
    the first slice sent again does not clear it (the middle one is still missing)."""
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    first, middle, last = _slices()
    middle.SOPInstanceUID = middle.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    with running_node(audit=audit) as node:
        assoc = _association(node.port)
        assert _send(assoc, [first, middle, last, first]) == [0, 0xA900, 0, 0]
        assoc.release()
        line, record = _failed_series(node, tmp_path, caplog, first.SeriesInstanceUID)
    assert "1 image of it refused on arrival" in line and "SOPInstanceUID" in line, line
    assert "SOPInstanceUID" in record["error"], record


def test_a_valid_series_is_segmented_whole(running_node, tmp_path):
    """(d) Every slice taken: one SEG referencing all three, no failure."""
    datasets = _slices()
    with running_node() as node:
        assoc = _association(node.port)
        assert _send(assoc, datasets) == [0, 0, 0]
        assoc.release()
        assert _wait_for(lambda: node.stats.segmented.total == 1), node.stats
    assert node.stats.failed == []
    (seg,) = _segs(tmp_path / "out")
    assert _referenced(seg) == {str(ds.SOPInstanceUID) for ds in datasets}


def test_the_refusals_kept_are_bounded_and_never_forget_a_held_series():
    """The notes of refused images: the first reason of each kept; an image taken clears its
    note, one noted against the series (no SOP Instance UID to name it by) is never cleared; past
    the bound the series noted longest ago that is not held is forgotten, a held one never."""
    from edgeseg.serve.dicom_refused import RefusedImages

    refused = RefusedImages(most=2)
    refused.refused("1.1", "1.1.1", "first", held={})
    refused.refused("1.1", "1.1.1", "second", held={})
    refused.refused("1.1", None, "its SOP Instance UID", held={})
    refused.taken("1.1", "1.1.1")
    refused.taken("1.1", "1.1.2")
    assert refused.outstanding("1.1") == "1 image of it refused on arrival and not taken since (a SEG of the others " \
                                         "would miss them); the first: its SOP Instance UID"
    assert refused.outstanding("1.1") is None  # let go once asked
    refused.refused("2.1", "2.1.1", "held", held={})
    refused.refused("3.1", "3.1.1", "not held", held={})
    refused.refused("4.1", "4.1.1", "new", held={"2.1": object()})  # 3.1 is forgotten, not 2.1
    assert refused.outstanding("3.1") is None and "held" in refused.outstanding("2.1")
    refused.refused("4.1", "4.1.2", "second image", held={})
    refused.refused("4.1", "4.1.3", "past the bound", held={})  # counted as one not named
    refused.taken("4.1", "4.1.3")
    assert refused.outstanding("4.1").startswith("3 images of it refused")


def test_a_slice_past_the_volume_limit_fails_the_series(running_node, tmp_path, caplog, audit, monkeypatch):
    """The third slice would take the series past the volume limit: refused with 0xA700, and the
    series fails rather than becoming a SEG of its first two slices (the size limits count like
    any refusal: the series taken in part is partial)."""
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    datasets = _slices()
    monkeypatch.setenv("EDGESEG_MAX_VOLUME_BYTES", str(2 * int(datasets[0].Rows) * int(datasets[0].Columns) * 4))
    with running_node(audit=audit) as node:
        assoc = _association(node.port)
        assert _send(assoc, datasets) == [0, 0, 0xA700]
        assoc.release()
        line, record = _failed_series(node, tmp_path, caplog, datasets[0].SeriesInstanceUID)
    assert "1 image of it refused on arrival" in line and "limit" in record["error"], (line, record)
