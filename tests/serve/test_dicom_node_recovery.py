"""What a DICOM node starting on a --work folder does with what it finds there, against real
files in real folders: a folder of someone else's files is refused, untouched; the parts of a
series are merged newest first and within the volume limit; a .seg.json that is not one is
passed over with a warning; links and FIFOs are never followed or opened; nothing set aside is
written over."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from pathlib import Path

import pytest

from edgeseg.serve.audit import AssociationAudit, AuditLog
from edgeseg.serve.dicom_recovery import take_up
from edgeseg.serve.dicom_segmented import SegmentedSeries
from edgeseg.serve.dicom_work import LOCK_NAME, MARKER_NAME, recover
from tests.serve.test_dicom_node import SERIES

pydicom = pytest.importorskip("pydicom")
FILES = sorted(SERIES.glob("*.dcm"))


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _put(folder: Path, *files: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        (folder / f"{_sop(path)}.dcm").write_bytes(path.read_bytes())


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def test_a_folder_of_someone_elses_files_is_refused_untouched(serve_bundle, tmp_path, free_port, wait_port):
    """--work on a folder holding files the node did not make ("2024", all digits, reads as a
    Series Instance UID) exits 2 in one line before the model loads, and leaves every file as it
    was, writing nothing in it. (It moved holiday.jpg to damaged/, deleted .notes, removed 2024/.)
    An empty folder is taken, marked as the node's, and taken again at the next start."""
    from tests.serve.test_dicom_node import DCMTK
    from tests.serve.test_dicom_node_durable import _listen, _stop

    if not DCMTK:
        pytest.skip("dcmtk (echoscu) is not installed")

    work = tmp_path / "photos"
    (work / "2024").mkdir(parents=True)
    (work / "2024" / "holiday.jpg").write_bytes(b"\xff\xd8 a photo")
    (work / "2024" / ".notes").write_text("mine")
    (work / "20261207").mkdir()
    before = _tree(work)
    node = _listen(serve_bundle, free_port(), tmp_path, "--work", str(work))
    err = node.communicate(timeout=60)[1]
    assert node.returncode == 2, err
    assert err.strip().splitlines() == [
        f"edgeseg: error: --work {work} is not empty and not an edgeseg listen work folder (no {MARKER_NAME}; it "
        "holds 2024, 20261207): name a new or empty folder, the node moves and removes what it finds in its work "
        "folder"]
    assert _tree(work) == before  # no listen.lock either
    empty = tmp_path / "empty"
    empty.mkdir()
    for _ in range(2):
        port = free_port()
        node = _listen(serve_bundle, port, tmp_path, "--work", str(empty))
        try:
            wait_port(port, timeout=60)
            assert "listening on" in node.stdout.readline()
            # it serves (and has gone on from its start-up line to waiting: a stop now is its normal end)
            assert subprocess.run(["echoscu", "-aec", "EDGESEG", "127.0.0.1", str(port)]).returncode == 0
        finally:
            err = _stop(node)
        assert node.returncode == 0, err
        assert sorted(p.name for p in empty.iterdir()) == [LOCK_NAME, MARKER_NAME]


def test_a_newer_copy_of_an_image_wins_over_an_older_one(tmp_path):
    """An image re-sent (other bytes) while its first copy was being segmented: the parts are
    merged newest first, as the live node does, so the copy received last is the one kept. (The
    older copy in UID.taken-N was renamed onto the newer one.)"""
    work, uid, sop = tmp_path / "work", "1.2.3", _sop(FILES[0])
    copies = {}
    for part, name in ((f"{uid}.taken-1", "OLDEST"), (f"{uid}.taken-2", "OLDER"), (uid, "NEWEST")):
        (work / part).mkdir(parents=True)
        ds = pydicom.dcmread(FILES[0])
        ds.PatientName = name
        ds.save_as(work / part / f"{sop}.dcm")
        copies[name] = (work / part / f"{sop}.dcm").read_bytes()
    _put(work / f"{uid}.taken-1", FILES[1])
    [series], staged = recover(work)
    assert (series.folder, set(series.frames), staged) == (work / uid, {sop, _sop(FILES[1])}, 0)
    assert (work / uid / f"{sop}.dcm").read_bytes() == copies["NEWEST"]
    assert series.sizes[sop] == len(copies["NEWEST"])
    assert sorted(p.name for p in work.iterdir()) == [uid]
    # with no part being received, the newer taken part wins
    (work / uid).rename(work / f"{uid}.taken-9")
    (work / f"{uid}.taken-3").mkdir()
    (work / f"{uid}.taken-3" / f"{sop}.dcm").write_bytes(copies["OLDEST"])
    recover(work)
    assert (work / uid / f"{sop}.dcm").read_bytes() == copies["NEWEST"]


def test_parts_past_the_volume_limit_are_set_aside_logged_and_audited(tmp_path, monkeypatch, caplog):
    """The parts of a series merged at start hold the volume limit a live series holds: the
    newest part (two slices) is taken up; an older one that would take the series past the limit
    (three slices as float32 HU) is moved to over-limit/, in one log line and an audit line.
    (All three were merged: a series the readers refuse.)"""
    work, uid = tmp_path / "work", "1.2.3"
    monkeypatch.setenv("EDGESEG_MAX_VOLUME_BYTES", str(5 * 512 * 512 * 4 // 2))  # 2.5 slices as float32 HU
    _put(work / f"{uid}.taken-1", FILES[0])
    _put(work / uid, *FILES[1:])
    held, audit = {}, AssociationAudit(AuditLog(tmp_path / "audit.jsonl"))
    with caplog.at_level(logging.WARNING, "edgeseg.listen"):
        take_up(work, 4242, held, SegmentedSeries(work, 60, durable=True), audit)
    assert set(held[uid].frames) == {_sop(f) for f in FILES[1:]} and held[uid].slices == 2
    assert [p.name for p in (work / "over-limit").iterdir()] == [f"{uid}-{_sop(FILES[0])}.dcm"]
    assert (work / "over-limit" / f"{uid}-{_sop(FILES[0])}.dcm").read_bytes() == FILES[0].read_bytes()
    [line] = [r.getMessage() for r in caplog.records if "over-limit" in r.getMessage()]
    assert f"series {uid}: the 1 image(s) in {uid}.taken-1 are not taken up with the rest of the series" in line
    assert "over the limit of 2621440" in line
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["series_uid"], r["images"], r["outcome"], r["previous_pid"]) for r in records] == \
        [(uid, 1, "over_limit", 4242), (uid, 2, "in_flight", 4242)]
    # a limit lowered since: the newest part is past it, and no older one stands for it
    work = tmp_path / "lowered"
    monkeypatch.setenv("EDGESEG_MAX_VOLUME_BYTES", str(512 * 512 * 4 * 3 // 2))  # 1.5 slices
    _put(work / f"{uid}.taken-1", FILES[0])
    _put(work / uid, *FILES[1:])
    (work / uid / ".seg.json").write_text("{}")
    [series], _ = recover(work)
    assert (series.frames, series.over_limit) == ({}, 3)
    assert sorted(p.name for p in work.iterdir()) == ["over-limit"] and len(list((work / "over-limit").iterdir())) == 3


@pytest.mark.parametrize("note", [
    {"until": 4e9, "file": "x.seg.dcm"},  # fields missing
    {"sop_instance_uid": "1.2", "series_instance_uid": "1.3", "instance_number": "2", "file": "x.seg.dcm",
     "slices": 3, "until": 4e9},  # a field of the wrong type
    '{"sop_instance_uid": "1.2", "series_instance_uid": "1.3", "instance_number": 2, "file": "x.seg.dcm", '
    '"slices": 3, "until": NaN}',  # kept until when?
    [1, 2, 3],
    "not json",
], ids=["missing", "wrong-type", "nan", "a-list", "not-json"])
def test_a_seg_note_that_is_not_one_is_passed_over_with_a_warning(tmp_path, caplog, note):
    """A .seg.json without the fields of a SEG reference, or with one of the wrong type, is no
    reference, in one warning: a series in flight is segmented into a SEG of its own, and a kept
    one (its time unknown) is let go. (Start-up raised TypeError, with a traceback, every time.)"""
    work, uid = tmp_path / "work", "1.2.3"
    _put(work / uid, FILES[0])
    _put(work / "1.2.4.segmented", FILES[1])
    for folder in (work / uid, work / "1.2.4.segmented"):
        (folder / ".seg.json").write_text(note if isinstance(note, str) else json.dumps(note))
    held, segmented = {}, SegmentedSeries(work, 60, durable=True)
    with caplog.at_level(logging.WARNING, "edgeseg.listen"):
        take_up(work, None, held, segmented)
    assert list(held) == [uid] and held[uid].replaces is None and len(segmented) == 0
    warned = [r.getMessage() for r in caplog.records if ".seg.json is not a note" in r.getMessage()]
    assert len(warned) == 2 and all("the series is taken up without it" in line for line in warned)
    assert sorted(p.name for p in work.iterdir()) == [uid]


def test_links_and_fifos_are_never_followed_or_opened(tmp_path):
    """A link planted as work/UID is moved aside (it was the merge target: the images went out
    of the work folder into the folder it names); a link to a file, a FIFO and a folder inside a
    series folder are moved aside unread (the FIFO blocked the start for good)."""
    work, uid, outside = tmp_path / "work", "1.2.3", tmp_path / "outside"
    outside.mkdir()
    (outside / "mine.dcm").write_bytes(FILES[2].read_bytes())
    _put(work / f"{uid}.taken-1", FILES[0])
    (work / uid).symlink_to(outside, target_is_directory=True)
    _put(work / "1.2.4", FILES[1])
    (work / "1.2.4" / "1.2.4.5.dcm").symlink_to(outside / "mine.dcm")
    os.mkfifo(work / "1.2.4" / "1.2.4.6.dcm")
    (work / "1.2.4" / "1.2.4.7.dcm").mkdir()
    (work / "1.2.4" / ".hidden").mkdir()
    result = []
    thread = threading.Thread(target=lambda: result.append(recover(work)), daemon=True)
    thread.start()
    thread.join(120)  # a guard against the FIFO: recover blocked on it, forever
    assert not thread.is_alive(), "recover() opened the FIFO"
    [(found, _)] = result
    assert {s.uid: set(s.frames) for s in found} == {uid: {_sop(FILES[0])}, "1.2.4": {_sop(FILES[1])}}
    assert (work / uid).is_dir() and not (work / uid).is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["mine.dcm"]
    damaged = work / "damaged"
    assert sorted(p.name for p in damaged.iterdir()) == \
        ["1.2.3", "1.2.4-.hidden", "1.2.4-1.2.4.5.dcm", "1.2.4-1.2.4.6.dcm", "1.2.4-1.2.4.7.dcm"]
    assert (damaged / "1.2.3").is_symlink() and (damaged / "1.2.4-1.2.4.5.dcm").is_symlink()


def test_what_is_set_aside_never_writes_over_what_was_set_aside_before(tmp_path):
    """Two starts each finding a damaged file of the same name: both are kept in damaged/, under
    names of their own. (The second was renamed onto the first.)"""
    work, uid = tmp_path / "work", "1.2.3"
    for text in (b"first, cut short", b"second, cut short"):
        (work / uid).mkdir(parents=True)
        (work / uid / "1.2.3.4.dcm").write_bytes(text)
        assert recover(work) == ([], 0)
    assert {p.name: p.read_bytes() for p in (work / "damaged").iterdir()} == \
        {f"{uid}-1.2.3.4.dcm": b"first, cut short", f"{uid}-2-1.2.3.4.dcm": b"second, cut short"}


def test_the_first_image_into_a_recovered_series_flushes_the_folder_recovery_made(tmp_path, monkeypatch):
    """recover() merges UID.taken-N into UID without flushing the work folder: the first image
    acknowledged into the series taken up flushes it, so a power cut cannot leave that image in a
    folder whose name never reached the disk."""
    import time

    work, uid = tmp_path / "work", str(pydicom.dcmread(FILES[0]).SeriesInstanceUID)
    _put(work / f"{uid}.taken-1", FILES[0])
    in_flight: dict = {}
    take_up(work, None, in_flight, SegmentedSeries(work, 600, durable=True))
    assert (work / uid).is_dir() and set(in_flight) == {uid}
    flushed: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        real(fd)
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", recording)
    ds = pydicom.dcmread(FILES[1])
    in_flight[uid].last = time.monotonic()
    in_flight[uid].keep(str(ds.SOPInstanceUID), ds, 1)
    assert str(work) in flushed and flushed.index(str(work)) > flushed.index(str(work / uid)), flushed


def test_a_series_taken_up_replaces_no_seg_whose_images_were_set_aside(tmp_path, monkeypatch):
    """A kept series' images (UID.segmented, with its SEG's note) moved to over-limit/ at start: the
    images received later are segmented into a SEG of their own, not into the next instance of a
    SEG series whose images the node no longer holds (as the live merge decides). The note is
    taken where its part was taken up."""
    import time

    from edgeseg.serve.dicom_seg_notes import save_reference

    uid, note = "1.2.3", {"sop_instance_uid": "1.2.4", "series_instance_uid": "1.2.5", "instance_number": 1,
                          "file": "1.2.3.seg.dcm", "slices": 1}
    monkeypatch.setenv("EDGESEG_MAX_VOLUME_BYTES", str(5 * 512 * 512 * 4 // 2))  # 2.5 slices as float32 HU
    for work, late in ((tmp_path / "past", FILES[1:]), (tmp_path / "within", FILES[1:2])):
        _put(work / f"{uid}.segmented", FILES[0])
        save_reference(work / f"{uid}.segmented", note, time.time() + 600)
        _put(work / uid, *late)
        [series], _ = recover(work)
        taken = (work / uid / ".seg.json").exists()
        if late == FILES[1:]:  # the kept image would make three slices: set aside, its note with it
            assert (series.over_limit, series.reference, taken) == (1, None, False)
        else:
            assert series.over_limit == 0 and series.reference["segs"][0]["instance_number"] == 1 and taken


@pytest.mark.parametrize("newer", ["slices", "enhanced"])
def test_parts_of_the_two_forms_are_never_merged_into_one_series(tmp_path, caplog, newer):
    """A series held as three slices and, in another part, as an Enhanced CT of them (one was being
    segmented when the other came): merged, the series read failed ("a series is read from one
    multi-frame file or from single-frame slices, not both") and the four acknowledged images
    ended with no SEG, deleted. The newer part is taken up, readable; the older one, the other
    form, is set aside in over-limit/, in one log line and an audit line."""
    from edgeseg.data.dicom import read_dicom_series
    from tests.enhanced_ct import read_slices, write_enhanced_ct

    work = tmp_path / "work"
    slices = read_slices(SERIES)
    uid = str(slices[0].SeriesInstanceUID)
    source = write_enhanced_ct(slices, tmp_path / "e.dcm")
    ds = pydicom.dcmread(source)
    ds.SeriesInstanceUID = uid
    ds.save_as(source, enforce_file_format=True)
    older, newest = ((f"{uid}.taken-1", [source]), (uid, FILES)) if newer == "slices" else \
        ((f"{uid}.taken-1", FILES), (uid, [source]))
    _put(work / older[0], *older[1])
    _put(work / newest[0], *newest[1])
    held, audit = {}, AssociationAudit(AuditLog(tmp_path / "audit.jsonl"))
    with caplog.at_level(logging.WARNING, "edgeseg.listen"):
        take_up(work, 4242, held, SegmentedSeries(work, 60, durable=True), audit)
    assert set(held[uid].frames) == {_sop(f) for f in newest[1]} and held[uid].slices == 3
    assert sorted(p.name for p in (work / "over-limit").iterdir()) == sorted(f"{uid}-{_sop(f)}.dcm" for f in older[1])
    [line] = [r.getMessage() for r in caplog.records if "over-limit" in r.getMessage()]
    assert "would mix a multi-frame file and other images" in line
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["images"], r["outcome"]) for r in records] == [(len(older[1]), "over_limit"), (len(newest[1]), "in_flight")]
    volume = read_dicom_series(work / uid)
    assert volume.hu.shape[0] == 3


def test_a_compressed_enhanced_ct_is_taken_up_whole_and_set_aside_cut_short(tmp_path):
    """The node stores an Enhanced CT as it came, compressed too (its frames are checked one at a
    time, never held decoded): found whole in the work folder at start, it is taken up (its
    encapsulated pixel data has no length to check: the file must end with the delimiter that
    closes it and hold a fragment for each frame); cut short, it is set aside as damaged."""
    from pydicom.uid import RLELossless

    from tests.enhanced_ct import read_slices, write_enhanced_ct

    source = write_enhanced_ct(read_slices(SERIES), tmp_path / "e.dcm")
    ds = pydicom.dcmread(source)
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(source, enforce_file_format=True)
    uid, sop = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _put(whole / uid, source)
    _put(cut / uid, source)
    (cut / uid / f"{sop}.dcm").write_bytes(source.read_bytes()[:-100])
    [series], _ = recover(whole)
    assert series.frames == {sop: 3} and series.multiframe == {sop}
    assert recover(cut) == ([], 0) and [p.name for p in (cut / "damaged").iterdir()] == [f"{uid}-{sop}.dcm"]


@pytest.mark.parametrize("change", ["trailing padding", "middle cut out"])
def test_a_compressed_enhanced_ct_is_judged_by_its_fragments_not_its_last_bytes(tmp_path, change):
    """An element after the pixel data (Data Set Trailing Padding here; a digital signature is the
    same) leaves the file whole, and it is taken up; a file with a part of its pixel data cut out
    but its end kept is not, and it is set aside as damaged. (Both were judged by the file's last
    8 bytes: the padded image went to damaged/, its series never segmented, and the cut one was
    taken up.)"""
    from pydicom.uid import RLELossless

    from edgeseg.serve.dicom_stored import whole_image
    from tests.enhanced_ct import read_slices, write_enhanced_ct

    source = write_enhanced_ct(read_slices(SERIES), tmp_path / "e.dcm")
    ds = pydicom.dcmread(source)
    ds.compress(RLELossless, generate_instance_uid=False)
    if change == "trailing padding":
        ds.add_new(0xFFFCFFFC, "OB", b"\0" * 64)
    ds.save_as(source, enforce_file_format=True)
    if change == "middle cut out":
        data = source.read_bytes()
        start = data.rindex(b"\xe0\x7f\x10\x00")  # the Pixel Data element
        middle = start + (len(data) - start) // 2
        source.write_bytes(data[:middle] + data[middle + 1000:])
    uid, sop = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    work = tmp_path / "work"
    _put(work / uid, source)
    found, _ = recover(work)
    if change == "trailing padding":
        assert whole_image(work / uid / f"{sop}.dcm") == (3, (ds.Rows, ds.Columns), True)
        assert [s.frames for s in found] == [{sop: 3}] and not (work / "damaged").exists()
    else:
        assert whole_image((work / "damaged").iterdir().__next__()) is None
        assert found == [] and [p.name for p in (work / "damaged").iterdir()] == [f"{uid}-{sop}.dcm"]


def test_names_that_break_the_uid_rule_are_not_taken_up(tmp_path):
    """The work folder is read by the UID rule every image is checked by on arrival
    (edgeseg.data.dicom_uids): a folder named ``1.02.3`` (a leading zero, a UID no image of the
    node carries) is no series, and ``1.02.3.4.dcm`` in a series folder is no image of it. (Both
    were taken up: an older, looser rule allowed leading zeros.)"""
    work, uid = tmp_path / "work", "1.2.3"
    _put(work / "1.02.3", FILES[0])
    _put(work / uid, FILES[1])
    (work / uid / "1.02.3.4.dcm").write_bytes(FILES[2].read_bytes())
    [series], _ = recover(work)
    assert (series.folder, set(series.frames)) == (work / uid, {_sop(FILES[1])})
    assert [p.name for p in (work / "damaged").iterdir()] == [f"{uid}-1.02.3.4.dcm"]
    assert [p.name for p in (work / "1.02.3").iterdir()] == [f"{_sop(FILES[0])}.dcm"]
