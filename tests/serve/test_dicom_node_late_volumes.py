"""Late images of a series holding several volumes, sent by dcmtk's storescu to a real node: each
volume's new SEG replaces that volume's earlier SEG (its SEG series, the next Instance Number, a
file named after it, audited with ``replaces``), a volume no late image joined keeps its SEG, a
volume the late images add gets a SEG series of its own, all or none across the volumes, and the
same after a restart on the --work folder. Before, the late images made new SEG series, one per
volume, beside the first ones, and nothing told which was current.

The oracle is how the series were made (tests/dicom_volume_series.py): which files are volume K."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.dicom_volume_series import KINDS, make_series
from tests.serve.test_dicom_node import DCMTK, _storescu, _wait_for
from tests.serve.test_dicom_node_failures import started_node
from tests.serve.test_dicom_node_slow_series import _referenced

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (storescu) is not installed: apt-get install dcmtk")


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _node(serve_bundle, tmp_path, free_port, wait_port, **options):
    """A node on a real Segmenter writing SEGs to tmp_path/out and audit lines to
    tmp_path/audit.jsonl (work folder tmp_path/work), stopped on leaving."""
    return started_node(serve_bundle, tmp_path, free_port, wait_port, audited=True, idle=1.0, **options)


def _send(node, files, rounds: int, kept: Path) -> None:
    """Send ``files`` and wait until the node has segmented ``rounds`` times and kept the series."""
    sent = _storescu(node.port, files)
    assert sent.returncode == 0, sent.stderr
    assert _wait_for(lambda: len(node.stats.segmented) + len(node.stats.failed) >= rounds and kept.is_dir(), 60), \
        node.stats
    assert not node.stats.failed, node.stats


def _series_lines(tmp_path) -> list[dict]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [line for line in map(json.loads, lines) if line["event"] == "series"]


def _two_each(uid: str) -> list[str]:
    """The files of two volumes' SEGs, each replaced once."""
    return sorted(f"{uid}.vol{k}{n}.seg.dcm" for k in (1, 2) for n in ("", "-2"))


def _replaced(out: Path, first: str, second: str) -> pydicom.Dataset:
    """The SEG ``second``, after checking with highdicom that it is the next instance of the SEG
    series of ``first``."""
    hd = pytest.importorskip("highdicom")
    earlier, later = (hd.seg.segread(out / name) for name in (first, second))
    assert later.SeriesInstanceUID == earlier.SeriesInstanceUID
    assert (int(earlier.InstanceNumber), int(later.InstanceNumber)) == (1, 2)
    assert later.SOPInstanceUID != earlier.SOPInstanceUID
    return later


@pytest.mark.parametrize("kind", ["stack", "orientation"])
def test_late_images_of_two_volumes_replace_each_volume_seg(serve_bundle, tmp_path, free_port, wait_port, kind):
    volumes = make_series(tmp_path / "series", KINDS[kind])
    uid = str(pydicom.dcmread(volumes[0][0]).SeriesInstanceUID)
    out, kept = tmp_path / "out", tmp_path / "work" / f"{uid}.segmented"
    with _node(serve_bundle, tmp_path, free_port, wait_port) as node:
        _send(node, [*volumes[0][:2], *volumes[1][:2]], 1, kept)
        assert sorted(p.name for p in out.iterdir()) == [f"{uid}.vol1.seg.dcm", f"{uid}.vol2.seg.dcm"]
        _send(node, [volumes[0][2], volumes[1][2]], 2, kept)  # late: the third slice of each volume
    assert sorted(p.name for p in out.iterdir()) == _two_each(uid)
    firsts = []
    for k, files in enumerate(volumes, start=1):
        seg = _replaced(out, f"{uid}.vol{k}.seg.dcm", f"{uid}.vol{k}-2.seg.dcm")
        assert _referenced(out / f"{uid}.vol{k}-2.seg.dcm") == {_sop(f) for f in files}  # all of volume K's images
        firsts.append(str(pydicom.dcmread(out / f"{uid}.vol{k}.seg.dcm").SOPInstanceUID))
        assert seg.SeriesInstanceUID != pydicom.dcmread(out / f"{uid}.vol{3 - k}.seg.dcm").SeriesInstanceUID
    lines = _series_lines(tmp_path)
    assert [(line["seg_file"], line.get("replaces")) for line in lines] == [
        (f"{uid}.vol1.seg.dcm", None), (f"{uid}.vol2.seg.dcm", None),
        (f"{uid}.vol1-2.seg.dcm", firsts[0]), (f"{uid}.vol2-2.seg.dcm", firsts[1])]


def test_a_series_of_one_volume_that_becomes_two(serve_bundle, tmp_path, free_port, wait_port):
    """Two slices of stack 1 make a series of one volume (``UID.seg.dcm``); the late images, its
    third slice and stack 2, make it two: volume 1 holds the images of that SEG, and its SEG
    replaces it (``UID-2.seg.dcm``, the next instance); volume 2 gets a SEG series of its own."""
    volumes = make_series(tmp_path / "series", KINDS["stack"])
    uid = str(pydicom.dcmread(volumes[0][0]).SeriesInstanceUID)
    out, kept = tmp_path / "out", tmp_path / "work" / f"{uid}.segmented"
    with _node(serve_bundle, tmp_path, free_port, wait_port) as node:
        _send(node, volumes[0][:2], 1, kept)
        _send(node, [volumes[0][2], *volumes[1]], 2, kept)
    assert sorted(p.name for p in out.iterdir()) == [f"{uid}-2.seg.dcm", f"{uid}.seg.dcm", f"{uid}.vol2.seg.dcm"]
    _replaced(out, f"{uid}.seg.dcm", f"{uid}-2.seg.dcm")
    assert _referenced(out / f"{uid}-2.seg.dcm") == {_sop(f) for f in volumes[0]}
    second = pydicom.dcmread(out / f"{uid}.vol2.seg.dcm")
    assert _referenced(out / f"{uid}.vol2.seg.dcm") == {_sop(f) for f in volumes[1]}
    assert second.SeriesInstanceUID != pydicom.dcmread(out / f"{uid}.seg.dcm").SeriesInstanceUID
    assert int(second.InstanceNumber) == 1
    assert [line.get("replaces") is None for line in _series_lines(tmp_path)] == [True, False, True]


def _third_stack(volumes, folder: Path) -> list[Path]:
    """A third stack of the ``stack`` series: volume 1's images again under StackID 3, new SOP
    instances, later Instance Numbers (so it is volume 3)."""
    from pydicom.uid import generate_uid

    folder.mkdir()
    files = []
    for j, path in enumerate(volumes[0]):
        ds = pydicom.dcmread(path)
        ds.StackID, ds.InstanceNumber = "3", 10 + j
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files.append(folder / f"stack3-{j}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def test_two_volumes_that_become_three_keep_the_segs_no_image_joined(serve_bundle, tmp_path, free_port, wait_port,
                                                                     caplog):
    """A third stack arrives late: volumes 1 and 2 hold the images their SEGs were made of, none of
    them sent again, so those SEGs stand (no SEG of them is made again); volume 3 gets a SEG series
    of its own."""
    volumes = make_series(tmp_path / "series", KINDS["stack"])
    third = _third_stack(volumes, tmp_path / "third")
    uid = str(pydicom.dcmread(volumes[0][0]).SeriesInstanceUID)
    out, kept = tmp_path / "out", tmp_path / "work" / f"{uid}.segmented"
    with caplog.at_level(logging.INFO, "edgeseg.listen"), _node(serve_bundle, tmp_path, free_port, wait_port) as node:
        _send(node, [*volumes[0], *volumes[1]], 1, kept)
        _send(node, third, 2, kept)
    assert sorted(p.name for p in out.iterdir()) == [f"{uid}.vol{k}.seg.dcm" for k in (1, 2, 3)]
    assert _referenced(out / f"{uid}.vol3.seg.dcm") == {_sop(f) for f in third}
    assert int(pydicom.dcmread(out / f"{uid}.vol3.seg.dcm").InstanceNumber) == 1
    assert [line["seg_file"] for line in _series_lines(tmp_path)] == [f"{uid}.vol{k}.seg.dcm" for k in (1, 2, 3)]
    for k in (1, 2):
        assert f"no image of it arrived since its SEG was made; {uid}.vol{k}.seg.dcm stands" in caplog.text


def test_late_images_make_the_segs_of_all_volumes_or_none(serve_bundle, tmp_path, free_port, wait_port):
    """A first late burst replaces both volumes' SEGs; in a second, volume 2's image carries a
    PatientSex no SEG can copy: volume 1's SEG that would replace its second is not made either,
    and the second SEG of each volume stays the latest, with one failed audit line."""
    volumes = make_series(tmp_path / "series", KINDS["stack"])
    uid = str(pydicom.dcmread(volumes[0][0]).SeriesInstanceUID)
    bad = pydicom.dcmread(volumes[1][2])
    bad.PatientSex = "X"
    bad.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    out, kept = tmp_path / "out", tmp_path / "work" / f"{uid}.segmented"
    with _node(serve_bundle, tmp_path, free_port, wait_port) as node:
        _send(node, [volumes[0][0], volumes[1][0]], 1, kept)
        _send(node, [volumes[0][1], volumes[1][1]], 2, kept)
        sent = _storescu(node.port, [volumes[0][2], tmp_path / "bad.dcm"])
        assert sent.returncode == 0, sent.stderr
        assert _wait_for(lambda: node.stats.failed, 60), node.stats
    assert node.stats.failed == [uid]
    assert sorted(p.name for p in out.iterdir()) == _two_each(uid)
    for k in (1, 2):
        _replaced(out, f"{uid}.vol{k}.seg.dcm", f"{uid}.vol{k}-2.seg.dcm")
    lines = _series_lines(tmp_path)
    assert [line["outcome"] for line in lines] == ["segmented"] * 4 + ["failed"], lines
    assert "PatientSex is 'X'" in lines[-1]["error"]


@pytest.mark.parametrize("late", ["sent-after-the-restart", "left-by-the-node-before"])
def test_a_kept_series_of_two_volumes_after_a_restart(serve_bundle, tmp_path, free_port, wait_port, late):
    """The images of a two-volume series kept in a durable --work folder are taken up by the next
    node with the SEG of each volume (and the images of each) noted beside them. A late image of
    volume 2 sent to that node replaces volume 2's SEG and leaves volume 1's as it is; one that the
    node before had received, not yet segmented (which images came late is then not known),
    makes each volume's SEG again, each the next instance of that volume's SEG series."""
    from edgeseg.serve.dicom_work import REFERENCE_NAME

    volumes = make_series(tmp_path / "series", KINDS["stack"])
    uid = str(pydicom.dcmread(volumes[0][0]).SeriesInstanceUID)
    out, work = tmp_path / "out", tmp_path / "work"
    with _node(serve_bundle, tmp_path, free_port, wait_port, durable=True) as node:
        _send(node, [*volumes[0], *volumes[1][:2]], 1, work / f"{uid}.segmented")
    note = json.loads((work / f"{uid}.segmented" / REFERENCE_NAME).read_text())
    if late == "left-by-the-node-before":  # as a node killed after storing it leaves it
        (work / uid).mkdir()
        (work / uid / f"{_sop(volumes[1][2])}.dcm").write_bytes(volumes[1][2].read_bytes())
    with _node(serve_bundle, tmp_path, free_port, wait_port, durable=True) as node:
        if late == "sent-after-the-restart":
            assert _storescu(node.port, [volumes[1][2]]).returncode == 0
        assert _wait_for(lambda: node.stats.segmented, 60), node.stats
    names = [f"{uid}.vol1.seg.dcm", f"{uid}.vol2-2.seg.dcm", f"{uid}.vol2.seg.dcm"]
    if late == "left-by-the-node-before":
        names.insert(0, f"{uid}.vol1-2.seg.dcm")
        _replaced(out, f"{uid}.vol1.seg.dcm", f"{uid}.vol1-2.seg.dcm")
        assert _referenced(out / f"{uid}.vol1-2.seg.dcm") == {_sop(f) for f in volumes[0]}
    assert sorted(p.name for p in out.iterdir()) == names
    _replaced(out, f"{uid}.vol2.seg.dcm", f"{uid}.vol2-2.seg.dcm")
    assert _referenced(out / f"{uid}.vol2-2.seg.dcm") == {_sop(f) for f in volumes[1]}
    # the note the next node read: the SEG of each volume with that volume's images
    assert [sorted(seg["images"]) for seg in note["segs"]] == [sorted(map(_sop, volumes[0])),
                                                                sorted(map(_sop, volumes[1][:2]))]
