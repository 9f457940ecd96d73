"""The DICOM node's refusal notes survive a node killed outright on a --work folder.

They lived in memory only: a node killed with SIGKILL and started again on its --work folder took
up the images it had acknowledged and segmented them into a SEG missing the slice it had refused
(and took the lone retry of a series that had failed for a refused slice as a series of one). Now
each change is written to ``listen.refused`` before the image is answered and read back at start.
A real node process, real pynetdicom senders, a real SIGKILL; the file itself against
RefusedImages with the times given."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from edgeseg.serve.dicom_refused import RefusedImages
from edgeseg.serve.dicom_refused_journal import GROWTH_FLOOR, NOTES_NAME
from tests.serve.test_dicom_node import _wait_for
from tests.serve.test_dicom_node_durable import _listen, _stop
from tests.serve.test_dicom_node_whole_series import _association, _send, _slices, _without

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")


def _series_lines(audit: Path) -> list[dict]:
    if not audit.is_file():
        return []
    return [line for line in map(json.loads, audit.read_text().splitlines()) if line["event"] == "series"]


def test_a_killed_node_restarted_on_its_work_folder_still_fails_for_the_images_refused(serve_bundle, tmp_path,
                                                                                       free_port, wait_port):
    """Series A fails for its refused middle slice; series B has its middle slice refused on an
    association still open when the node is killed. The next node on the folder fails B (it was
    segmented into a 2-slice SEG) and fails A's lone retry of its middle slice (it was a 1-slice
    SEG)."""
    work, audit = tmp_path / "work", tmp_path / "audit.jsonl"
    first, second = _slices(), _slices()
    port = free_port()
    node = _listen(serve_bundle, port, tmp_path, "--work", str(work), "--idle", "0.5", "--audit-log", str(audit))
    try:
        wait_port(port, timeout=60)
        assoc = _association(port)
        assert _send(assoc, [first[0], _without(first[1], "ImagePositionPatient"), first[2]]) == [0, 0xA900, 0]
        assoc.release()
        assert _wait_for(lambda: len(_series_lines(audit)) == 1, 60)
        assoc = _association(port)  # open: its series is not complete while it lasts
        assert _send(assoc, [second[0], _without(second[1], "ImagePositionPatient"), second[2]]) == [0, 0xA900, 0]
    finally:
        node.kill()
        node.communicate(timeout=60)
    assoc.abort()
    [failed] = _series_lines(audit)
    assert failed["outcome"] == "failed" and failed["series_uid"] == first[0].SeriesInstanceUID
    port = free_port()
    node = _listen(serve_bundle, port, tmp_path, "--work", str(work), "--idle", "0.5", "--audit-log", str(audit))
    try:
        wait_port(port, timeout=60)
        assert _wait_for(lambda: len(_series_lines(audit)) == 2, 60)
        assoc = _association(port)
        assert _send(assoc, [first[1]]) == [0]  # the refused slice, corrected, retried alone
        assoc.release()
        assert _wait_for(lambda: len(_series_lines(audit)) == 3, 60)
    finally:
        err = _stop(node)
    assert node.returncode == 0 and "Traceback" not in err, err
    taken_up, retry = _series_lines(audit)[1:]
    assert (taken_up["series_uid"], taken_up["outcome"]) == (second[0].SeriesInstanceUID, "failed"), taken_up
    assert "1 image of it refused on arrival" in taken_up["error"], taken_up
    assert (retry["series_uid"], retry["outcome"]) == (first[0].SeriesInstanceUID, "failed"), retry
    assert "it failed before for images refused, when it had 3 images; this re-send holds 1" in retry["error"], retry
    assert not list((tmp_path / "out").glob("*.seg.dcm"))


def test_the_notes_read_back_decide_as_the_notes_written(tmp_path):
    """Notes made, taken, failed and forgotten, then read back by a node starting on the folder
    (the first never closed, as after a kill): every series is judged as the first would."""
    work = tmp_path / "work"
    work.mkdir()
    live = RefusedImages.kept_in(work)
    live.refused("1.1", "1.1.2", "no position", held={})
    live.refused("1.2", "1.2.2", "too big", held={})
    live.taken("1.2", "1.2.2")  # sent again, corrected
    live.refused("1.3", None, "unreadable SOP UID", held={})
    live.refused("1.4", "1.4.1", "bad", held={})
    assert live.outstanding("1.4", holds=["1.4.2", "1.4.3"]) is not None  # fails, remembered whole
    live.refused("1.5", "1.5.1", "bad", held={})
    live.whole("1.5")  # an Enhanced CT of it
    again = RefusedImages.kept_in(work)
    assert again.outstanding("1.1", holds=["1.1.1"]).startswith("1 image of it refused on arrival")
    assert again.outstanding("1.2", holds=["1.2.1", "1.2.2"]) is None
    assert again.outstanding("1.3", holds=["1.3.1"]) is not None
    assert again.outstanding("1.4", holds=["1.4.1"]).startswith("it failed before for images refused, when it had 3")
    assert again.outstanding("1.4", holds=["1.4.1", "1.4.2", "1.4.3"]) is None
    assert again.outstanding("1.5", holds=["1.5.9"]) is None


def test_a_line_cut_short_is_passed_over_and_times_run_on_across_the_restart(tmp_path, caplog):
    """The last line cut short by the kill is passed over with a warning, the lines before it
    stand; a note written 6 hours ago (by the wall clock) is forgotten at the start."""
    work = tmp_path / "work"
    work.mkdir()
    live = RefusedImages.kept_in(work)
    live.refused("2.1", "2.1.1", "bad", held={})
    live.refused("2.2", "2.2.1", "bad", held={})
    path = work / NOTES_NAME
    lines = path.read_text().splitlines()
    old = json.loads(lines[0])
    old[-1] -= 6 * 3600 + 1  # written more than 6 hours ago
    path.write_text("\n".join([json.dumps(old), lines[1], '["note","2.3","2.3.1","b']))
    with caplog.at_level(logging.WARNING, "edgeseg.listen"):
        again = RefusedImages.kept_in(work)
    assert "1 line(s) are not refusal notes" in caplog.text
    assert again.outstanding("2.1", holds=["2.1.2"]) is None  # past its time
    assert again.outstanding("2.2", holds=["2.2.2"]) is not None
    assert again.outstanding("2.3", holds=["2.3.2"]) is None
    held = RefusedImages.kept_in(work)  # a series in flight at the start keeps its notes, however old
    held.refused("2.4", "2.4.1", "bad", held={}, now=time.monotonic() - 7 * 3600)
    assert RefusedImages.kept_in(work, held={"2.4"}).outstanding("2.4", held={"2.4"}) is not None


def test_the_file_stays_bounded_by_the_notes(tmp_path):
    """A peer sending image after refused image, each then taken: the file is rewritten as it
    grows, never past the notes' bytes it was rewritten with, twice, and 1 MiB (and a line)."""
    work = tmp_path / "work"
    work.mkdir()
    live = RefusedImages.kept_in(work)
    for n in range(1500):
        live.refused("3.1", f"3.1.{n}", "bad", held={})
        live.taken("3.1", f"3.1.{n}")
        path = work / NOTES_NAME  # none once rewritten with no note left
        assert not path.exists() or path.stat().st_size <= GROWTH_FLOOR + 200
    live.refused("3.2", "3.2.1", "bad", held={})
    again = RefusedImages.kept_in(work)
    assert len((work / NOTES_NAME).read_text().splitlines()) == 1  # rewritten at the start: the one note
    assert again.outstanding("3.2") is not None
