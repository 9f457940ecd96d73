"""The DICOM node's --work folder against a real node process, dcmtk's storescu and a real SIGKILL:
images acknowledged by a node killed outright are segmented by the next node on the folder (into
the SEG an uninterrupted node makes of them), a write the kill cut short is never read, a live
node's folder is refused to a second node, and the series kept for late images survive a stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.test_dicom_node import DCMTK, SERIES, _storescu, _wait_for
from tests.serve.test_dicom_node_slow_series import _referenced

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed")


def _listen(bundle, port: int, tmp_path: Path, *options: str, out: str | None = "out") -> subprocess.Popen:
    """``edgeseg listen`` as a process writing SEGs to tmp_path/OUT (None: no --out; TMPDIR: tmp_path/tmp)."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "listen", str(bundle), "--port", str(port),
                             *(["--out", str(tmp_path / out)] if out else []), "--backend", "onnxruntime:fp32",
                             *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(tmp_path / "tmp"), OMP_NUM_THREADS="1"))


def _stop(proc: subprocess.Popen, signum=signal.SIGTERM) -> str:
    """Stop ``proc`` with ``signum`` and return its stderr."""
    try:
        proc.send_signal(signum)
        return proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _segmented_on_restart(bundle, tmp_path: Path, free_port, wait_port, work: Path, uid: str, *options: str) -> str:
    """Start a node on ``work`` (``--idle 0.5``), wait for the SEG of ``uid`` it makes of what it
    found there, stop it and return its stderr."""
    port = free_port()
    node = _listen(bundle, port, tmp_path, "--work", str(work), "--idle", "0.5", *options)
    try:
        wait_port(port, timeout=60)
        assert _wait_for(lambda: (tmp_path / "out" / f"{uid}.seg.dcm").is_file(), 60)
    finally:
        err = _stop(node)
    assert node.returncode == 0 and "Traceback" not in err, err
    return err


def _seg(path: Path) -> tuple[set[str], bytes, int]:
    """What a SEG says of its series: the instances it references, its label frames, their count."""
    ds = pydicom.dcmread(path)
    return _referenced(path), bytes(ds.PixelData), int(ds.NumberOfFrames)


def _node_folder(work: Path) -> None:
    """Make ``work`` as a node makes its work folder: marked as the node's (a folder that is not is
    refused)."""
    from edgeseg.serve.dicom_work import MARKER_NAME, MARKER_TEXT

    work.mkdir(parents=True)
    (work / MARKER_NAME).write_text(MARKER_TEXT)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_acknowledged_images_of_a_killed_node_are_segmented_after_restart(serve_bundle, tmp_path, free_port,
                                                                          wait_port):
    """Two images acknowledged, then SIGKILL before the series is complete: the next node on the
    same --work segments them into the SEG an uninterrupted node makes of those two images, says
    so in its log and its audit log. (Before --work, a killed node's folder was orphaned under
    TMPDIR and the images were never segmented.)"""
    files, work, port = sorted(SERIES.glob("*.dcm"))[:2], tmp_path / "work", free_port()
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    node = _listen(serve_bundle, port, tmp_path, "--work", str(work), "--idle", "600")
    try:
        wait_port(port, timeout=60)
        stored = _storescu(port, files)
        assert stored.returncode == 0, stored.stderr
        assert len(list((work / uid).glob("*.dcm"))) == 2  # acknowledged, waiting for the series to end
    finally:
        node.kill()  # SIGKILL: no stop, no segmenting
        node.communicate(timeout=60)
    assert not list((tmp_path / "out").glob("*.seg.dcm"))
    killed = node.pid
    err = _segmented_on_restart(serve_bundle, tmp_path, free_port, wait_port, work, uid, "--audit-log",
                                str(tmp_path / "audit.jsonl"))
    assert f"series {uid}: 2 image(s) acknowledged by the node of pid {killed} and not yet segmented" in err
    [recovered] = [line for line in map(json.loads, (tmp_path / "audit.jsonl").read_text().splitlines())
                   if line["event"] == "recovered"]
    assert (recovered["series_uid"], recovered["images"], recovered["outcome"], recovered["previous_pid"]) == \
        (uid, 2, "in_flight", killed)
    # the oracle: a node never killed, sent the same two images
    port = free_port()
    whole = _listen(serve_bundle, port, tmp_path, "--idle", "0.5", out="uninterrupted")
    try:
        wait_port(port, timeout=60)
        assert _storescu(port, files).returncode == 0
        assert _wait_for(lambda: (tmp_path / "uninterrupted" / f"{uid}.seg.dcm").is_file(), 60)
    finally:
        _stop(whole)
    assert _seg(tmp_path / "out" / f"{uid}.seg.dcm") == _seg(tmp_path / "uninterrupted" / f"{uid}.seg.dcm")
    assert {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files} == \
        _referenced(tmp_path / "out" / f"{uid}.seg.dcm")


def test_a_write_cut_short_is_not_segmented(serve_bundle, tmp_path, free_port, wait_port):
    """What a node killed while writing the third image leaves (its staged file, half written: its
    Success was never sent), and a SOP.dcm cut short (a disk that lost what it was told it had
    written), are never read: the next node segments the two whole images alone, removes the
    staged file and moves the short one aside, with a line for each."""
    files, work = sorted(SERIES.glob("*.dcm")), tmp_path / "work"
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    _node_folder(work)
    (work / uid).mkdir()
    dead = _dead_pid()
    (work / "listen.lock").write_text(f"{dead}\n")
    for path, sop in zip(files[:2], sops[:2]):
        (work / uid / f"{sop}.dcm").write_bytes(path.read_bytes())
    half = files[2].read_bytes()[: files[2].stat().st_size // 2]
    (work / uid / f".{sops[2]}.dcm.staging-{dead}-0123abcd.dcm").write_bytes(half)
    (work / uid / "1.2.3.4.dcm").write_bytes(half)  # named as whole, but cut short
    err = _segmented_on_restart(serve_bundle, tmp_path, free_port, wait_port, work, uid)
    assert _referenced(tmp_path / "out" / f"{uid}.seg.dcm") == set(sops[:2])
    assert f"removed 1 image(s) in {work} whose writing the node of pid {dead} did not finish" in err
    assert "1.2.3.4.dcm in the work folder is not a whole image" in err
    assert [p.name for p in (work / "damaged").iterdir()] == [f"{uid}-1.2.3.4.dcm"]
    assert not list(work.rglob(".*staging*"))


def test_a_live_nodes_work_folder_is_refused_to_a_second_node(serve_bundle, tmp_path, free_port, wait_port):
    """A second node on the folder of a running one exits in one line, before it loads the model,
    and the first one serves on with its images; once the first is killed, the folder is taken."""
    work, first_port = tmp_path / "work", free_port()
    first = _listen(serve_bundle, first_port, tmp_path, "--work", str(work), "--idle", "600")
    try:
        wait_port(first_port, timeout=60)
        assert _storescu(first_port, sorted(SERIES.glob("*.dcm"))[:1]).returncode == 0
        second = _listen(serve_bundle, free_port(), tmp_path, "--work", str(work))
        out, err = second.communicate(timeout=60)
        assert second.returncode == 2, err
        assert err.strip().splitlines() == [f"edgeseg: error: --work {work} is the work folder of a running edgeseg "
                                            f"listen (pid {first.pid}); two nodes cannot share one work folder"]
        assert len(list(work.rglob("*.dcm"))) == 1 and (work / "listen.lock").read_text() == f"{first.pid}\n"
        assert subprocess.run(["echoscu", "-aec", "EDGESEG", "127.0.0.1", str(first_port)]).returncode == 0
    finally:
        first.kill()
        first.communicate(timeout=60)
    port = free_port()
    third = _listen(serve_bundle, port, tmp_path, "--work", str(work), "--idle", "0.5")
    try:
        wait_port(port, timeout=60)
        assert _wait_for(lambda: len(list((tmp_path / "out").glob("*.seg.dcm"))) == 1, 60)
    finally:
        _stop(third)


def test_recovered_series_count_against_max_series(serve_bundle, tmp_path, free_port, wait_port):
    """A series taken up after a kill holds its --max-series slot like one being received: with
    --max-series 1 an image of another series is refused (0xA700) until it is segmented."""
    files, work, port = sorted(SERIES.glob("*.dcm")), tmp_path / "work", free_port()
    other = tmp_path / "other.dcm"
    ds = pydicom.dcmread(files[0])
    ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".2"
    ds.save_as(other)
    node = _listen(serve_bundle, port, tmp_path, "--work", str(work), "--idle", "600", "--max-series", "1")
    try:
        wait_port(port, timeout=60)
        assert _storescu(port, files[:2]).returncode == 0
    finally:
        node.kill()
        node.communicate(timeout=60)
    port = free_port()
    node = _listen(serve_bundle, port, tmp_path, "--work", str(work), "--idle", "600", "--max-series", "1")
    try:
        wait_port(port, timeout=60)
        refused = _storescu(port, [other])
        assert "OutOfResources" in refused.stderr + refused.stdout, refused.stderr
        assert not (work / str(ds.SeriesInstanceUID)).exists()
    finally:
        err = _stop(node)  # the stop segments the series taken up
    assert node.returncode == 0 and "segmenting the 1 series received and not yet segmented" in err, err
    assert len(_referenced(tmp_path / "out" / f"{pydicom.dcmread(files[0]).SeriesInstanceUID}.seg.dcm")) == 2


def test_a_kept_series_survives_a_stop_and_its_late_image_replaces_its_seg(serve_bundle, tmp_path, free_port,
                                                                         wait_port):
    """The images of a segmented series, kept for late images, are kept across a stop and a start
    on the same --work: the late image sent to the new node is segmented with them into a SEG that
    replaces the first (its series, the next Instance Number). (A stop removed them: the late image
    made a SEG of its own.)"""
    files, work, port = sorted(SERIES.glob("*.dcm")), tmp_path / "work", free_port()
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    node = _listen(serve_bundle, port, tmp_path, "--work", str(work), "--idle", "0.5")
    try:
        wait_port(port, timeout=60)
        assert _storescu(port, files[:2]).returncode == 0
        assert _wait_for(lambda: (work / f"{uid}.segmented").is_dir(), 60)
    finally:
        _stop(node)
    assert len(list((work / f"{uid}.segmented").glob("*.dcm"))) == 2
    port = free_port()
    node = _listen(serve_bundle, port, tmp_path, "--work", str(work), "--idle", "0.5")
    try:
        wait_port(port, timeout=60)
        assert _storescu(port, files[2:]).returncode == 0
        assert _wait_for(lambda: (tmp_path / "out" / f"{uid}-2.seg.dcm").is_file(), 60)
    finally:
        _stop(node)
    first, second = (pydicom.dcmread(tmp_path / "out" / name) for name in (f"{uid}.seg.dcm", f"{uid}-2.seg.dcm"))
    assert second.SeriesInstanceUID == first.SeriesInstanceUID and int(second.InstanceNumber) == 2
    assert len(_referenced(tmp_path / "out" / f"{uid}-2.seg.dcm")) == 3


def test_a_forced_stop_leaves_the_series_it_did_not_segment_to_the_next_start(serve_bundle, tmp_path, free_port,
                                                                              wait_port):
    """A second interrupt during the stop segments no more series; in a --work folder the images
    of those left stay there (they were removed with the folder), and the next node segments them."""
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.dicom_node import DicomNode
    from tests.serve.test_dicom_node import forced_stop

    work = tmp_path / "work"
    node = forced_stop(serve_bundle, tmp_path, free_port, wait_port, work=work, durable=True)
    assert len(node.stats.failed) == 1
    [left] = [p for p in work.iterdir() if p.name.startswith(node.stats.failed[0] + ".taken-")]
    assert len(list(left.glob("*.dcm"))) == 3
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as real:
        again = DicomNode(real, port=free_port(), out=tmp_path / "out", idle=0.5, work=work, durable=True)
        again.start()
        try:
            assert _wait_for(lambda: again.stats.segmented == node.stats.failed, 60), again.stats
        finally:
            again.stop()
    assert len(_referenced(tmp_path / "out" / f"{node.stats.failed[0]}.seg.dcm")) == 3


def test_a_series_killed_while_segmented_and_received_again_is_taken_up_whole(serve_bundle, tmp_path, free_port,
                                                                              wait_port):
    """What a node killed while segmenting a series (its folder moved aside, UID.taken-N) that was
    meanwhile receiving more of it (UID) leaves: one series again, a re-sent image counted once,
    segmented into one SEG of all its images."""
    files, work = sorted(SERIES.glob("*.dcm")), tmp_path / "work"
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    _node_folder(work)
    for folder, taken in ((work / f"{uid}.taken-1", files[:2]), (work / uid, files[1:])):
        folder.mkdir()
        for path in taken:
            (folder / f"{pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID}.dcm").write_bytes(
                path.read_bytes())
    err = _segmented_on_restart(serve_bundle, tmp_path, free_port, wait_port, work, uid)
    assert f"series {uid}: 3 image(s) acknowledged by an earlier node and not yet segmented" in err
    assert _referenced(tmp_path / "out" / f"{uid}.seg.dcm") == set(sops)
    assert [p.name for p in work.iterdir() if p.is_dir()] == [f"{uid}.segmented"]  # kept for late images
