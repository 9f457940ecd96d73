"""``listen.refused`` (dicom_refused_journal.py) as a file on disk: its creation flushed with its
folder, its size bounded in bytes, a file past what a start reads read from its newest notes, a
line with a time that is no finite number passed over, and nothing written once it is closed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edgeseg.serve.dicom_refused import RefusedImages
from edgeseg.serve.dicom_refused_journal import GROWTH_FLOOR, NOTE_BYTES, NOTES_NAME, REASON_BYTES, RefusalJournal

REAL_FSYNC = os.fsync
# 2,000 SOP Instance UIDs of 60 characters: one "fail" line of a series holding them is ~126 KB
SOPS = [f"1.2.826.0.1.3680043.8.498.{10 ** 30 + n}.{10 ** 20 + n}" for n in range(2000)]


def _opened(path: Path) -> list[str]:
    """The descriptors of this process open on ``path``."""
    return [fd for fd in os.listdir("/proc/self/fd")
            if os.path.realpath(f"/proc/self/fd/{fd}") == str(path.resolve())]


def test_the_write_that_creates_the_file_flushes_its_folder(tmp_path, monkeypatch):
    """The first note made the file (O_CREAT) and flushed the file alone: a power cut could lose
    its name, and the note with it. Its folder is flushed after it; a later write flushes the file
    alone."""
    work = tmp_path / "work"
    work.mkdir()
    notes = RefusedImages.kept_in(work)
    flushed: list[str] = []

    def recording(fd: int) -> None:
        REAL_FSYNC(fd)
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", recording)
    notes.refused("1.2.3", "1.2.3.4", "bad", held=())
    assert flushed == [str(work / NOTES_NAME), str(work)]
    flushed.clear()
    notes.refused("1.2.3", "1.2.3.5", "bad", held=())
    assert flushed == [str(work / NOTES_NAME)]
    notes.close()


def test_a_series_failing_and_resent_again_and_again_keeps_the_file_bounded_in_bytes(tmp_path):
    """A series of 2,000 slices with one refused, failed (its 2,000 SOP Instance UIDs remembered in
    one line) and then re-sent whole (the failure dropped), 60 times: 3 lines a round, so the count
    of lines never reached its bound of 1024 and the file grew to 9.9 MB holding no note at all.
    Bounded in bytes, it stays within 1 MiB and twice the notes' own size (and one line)."""
    work = tmp_path / "work"
    work.mkdir()
    notes = RefusedImages.kept_in(work)
    path, peak = work / NOTES_NAME, 0
    for _ in range(60):
        notes.refused("1.9", SOPS[0], "bad", held=())
        notes.outstanding("1.9", holds=SOPS[1:])  # fails: remembered with its 2,000 images
        notes.outstanding("1.9", holds=SOPS)  # the whole re-send: the failure dropped
        peak = max(peak, path.stat().st_size if path.exists() else 0)
    line = len(",".join(f'"{sop}"' for sop in SOPS)) + 100
    assert len(notes) == 0
    assert peak <= GROWTH_FLOOR + 2 * line, peak
    notes.close()
    assert RefusedImages.kept_in(work).outstanding("1.9", holds=SOPS[:1]) is None  # nothing noted


def test_a_file_past_what_a_start_reads_keeps_its_newest_notes(tmp_path, caplog):
    """Read up to its cap from the start, a file past it lost its newest notes, the ones a node
    killed just now wrote. It is read from its end, with a warning."""
    work = tmp_path / "work"
    work.mkdir()
    journal = RefusalJournal(work)
    for n in range(200):
        journal.write("note", f"5.{n}", f"5.{n}.1", "old", 0.0)
    journal.write("note", "5.999", "5.999.1", "newest", 0.0)
    journal.close()
    size = (work / NOTES_NAME).stat().st_size
    with caplog.at_level(logging.WARNING, "edgeseg.listen"):
        read = list(RefusalJournal(work).read(most_bytes=size // 2))
    assert read[-1][:4] == ["note", "5.999", "5.999.1", "newest"]
    assert 90 <= len(read) <= 110  # half of them, each whole
    assert "only the refusal notes in its last" in caplog.text
    assert "are not refusal notes" not in caplog.text  # the line cut by the cap is not read as a bad one


def test_a_time_that_is_no_finite_number_is_passed_over(tmp_path, caplog):
    """A 400-digit time raised OverflowError at the start (a traceback, no node); NaN or 1e999
    was kept, a note that never expires. Each such line is passed over with one warning."""
    work = tmp_path / "work"
    work.mkdir()
    path = work / NOTES_NAME
    path.write_text('["note","9","9.1","x",1' + "0" * 400 + ']\n["note","9","9.2","x",NaN]\n'
                    '["fail","8",["8.1"],1e999]\n["note","7","7.1","x",-Infinity]\n')
    with caplog.at_level(logging.WARNING, "edgeseg.listen"):
        notes = RefusedImages.kept_in(work)
    assert len(notes) == 0
    assert "4 line(s) are not refusal notes" in caplog.text
    assert notes.outstanding("9", holds=["9.3"]) is None
    notes.close()


def test_nothing_is_written_once_the_journal_is_closed(tmp_path):
    """A handler late after the stop made a note: the file was opened again (a descriptor left
    open, a write into a folder another node may own by then). Once closed, a change is kept in
    memory only."""
    work = tmp_path / "work"
    work.mkdir()
    notes = RefusedImages.kept_in(work)
    notes.refused("1.2.3", "1.2.3.4", "bad", held=())
    notes.close()
    path = work / NOTES_NAME
    before = path.read_bytes()
    notes.refused("1.2.3", "1.2.3.5", "late", held=())
    notes.outstanding("1.2.3", holds=[])  # a change that would rewrite it
    assert path.read_bytes() == before
    assert _opened(path) == []


def test_a_note_with_a_reason_beyond_ascii_stays_within_its_bytes(tmp_path):
    """A reason was cut at 500 characters, but JSON writes a character beyond ASCII escaped in 6
    or 12 bytes: a note's line reached ~3 KB past the 1 KiB a start's cap counts for each note,
    so the node's own file could pass it and lose its oldest notes. Cut by bytes as written, each
    line stays within NOTE_BYTES and reads back as the start of the reason."""
    work = tmp_path / "work"
    work.mkdir()
    journal = RefusalJournal(work)
    uid = "1." + "2" * 62  # 64 characters, a UID's most
    reasons = ["its size cannot be read: " + "é" * 600, "\U0001f600" * 600, "x" * 600]
    for reason in reasons:
        journal.write("note", uid, uid, reason, 0.0)
    journal.close()
    lines = (work / NOTES_NAME).read_bytes().splitlines(keepends=True)
    assert len(lines) == 3 and max(len(line) for line in lines) <= NOTE_BYTES, [len(line) for line in lines]
    read = list(RefusalJournal(work).read(most_bytes=10 * NOTE_BYTES))
    for event, reason in zip(read, reasons):
        assert reason.startswith(event[3]) and len(event[3]) >= REASON_BYTES // 12, event[3][:40]
    assert read[2][3] == "x" * REASON_BYTES
