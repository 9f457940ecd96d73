"""What a DICOM node starting on a --work folder does with what it finds there, against real
files in real folders: a folder of someone else's files is refused, untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.serve.dicom_work import LOCK_NAME, MARKER_NAME
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
    from tests.serve.test_dicom_node_durable import _listen, _stop

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
        finally:
            err = _stop(node)
        assert node.returncode == 0, err
        assert sorted(p.name for p in empty.iterdir()) == [LOCK_NAME, MARKER_NAME]
