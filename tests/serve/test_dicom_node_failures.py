"""The DICOM node where a peer or a series does not go the plain way: a forward peer that cannot
be reached, a series no SEG can be made of, images sent compressed. dcmtk's storescu and echoscu
are the peers."""

from __future__ import annotations

import contextlib
import functools
import logging
import subprocess

import pytest

from edgeseg.serve.dicom_node import DicomNode, Peer
from tests.serve.test_dicom_node import DCMTK, SERIES, _HeldSegmenter, _storescu, _wait_for

pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")


@contextlib.contextmanager
def started_node(serve_bundle, tmp_path, free_port, wait_port, wrap=None, audited=False, **options):
    """A DicomNode (its segmenter the bundle's, or ``wrap(segmenter)``) started, writing to
    tmp_path/out unless ``out`` says otherwise (and, ``audited``, audit lines to
    tmp_path/audit.jsonl), and stopped on leaving."""
    from edgeseg.runtime.provenance import provenance
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.audit import AuditLog

    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
        audit = AuditLog(tmp_path / "audit.jsonl", provenance(segmenter)) if audited else None
        options = {"out": tmp_path / "out", "idle": 0.5, "work": tmp_path / "work", "audit": audit, **options}
        node = DicomNode(wrap(segmenter) if wrap else segmenter, port=free_port(), **options)
        node.start()
        try:
            wait_port(node.port)
            yield node
        finally:
            node.stop()
            if audit is not None:
                audit.close()


@pytest.fixture
def running_node(serve_bundle, tmp_path, free_port, wait_port):
    """``with running_node(wrap=None, **options) as node``: :func:`started_node` on this test's
    bundle and folders."""
    return functools.partial(started_node, serve_bundle, tmp_path, free_port, wait_port)


def _edgeseg_errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("edgeseg")]


@pytest.mark.parametrize("host", ["127.0.0.1", "archive.invalid"])
def test_a_peer_that_cannot_be_reached_leaves_the_seg_in_out(running_node, tmp_path, free_port, caplog, host):
    """Forwarding to a peer that is down (nothing on its port) or whose name does not resolve: the
    series was segmented and its SEG stays in --out, and waits in --out/unsent to be sent again;
    the log says so in one line (no traceback, not "not segmented"), and the node goes on serving."""
    files = sorted(SERIES.glob("*.dcm"))
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    with running_node(forward=Peer(host, free_port(), "ARCHIVE")) as node:
        assert _storescu(node.port, files).returncode == 0
        assert _wait_for(lambda: node.stats.not_forwarded), node.stats
        echo = subprocess.run(["echoscu", "-aec", "EDGESEG", "127.0.0.1", str(node.port)], capture_output=True,
                              text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
    assert node.stats.segmented == [uid] and node.stats.failed == [] and node.stats.forwarded == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{uid}.seg.dcm", "unsent"]
    assert (tmp_path / "out" / "unsent" / f"{uid}.seg.dcm").read_bytes() == (tmp_path / "out" / f"{uid}.seg.dcm").read_bytes()
    [error] = _edgeseg_errors(caplog)
    message = error.getMessage()
    assert error.exc_info is None and "\n" not in message
    assert "SEG not forwarded: could not associate with ARCHIVE@" in message and "it waits in" in message


def test_a_peer_that_never_answers_the_connection_costs_the_connect_timeout(running_node, tmp_path, caplog):
    """A listening socket whose backlog is full drops new connection attempts, as a firewalled
    host does: without a connect timeout the worker waited the OS's ~2 minutes per series."""
    import socket

    files = sorted(SERIES.glob("*.dcm"))
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    with socket.socket() as silent, contextlib.ExitStack() as fillers:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        # connections no one accepts until the backlog is full (how many fit depends on the
        # kernel): the next attempt is then dropped, not refused
        for _ in range(16):
            filler = fillers.enter_context(socket.socket())
            filler.settimeout(0.5)
            try:
                filler.connect(silent.getsockname())
            except TimeoutError:
                break
        else:
            pytest.skip("this kernel never filled the listening socket's backlog")
        with running_node(forward=Peer("127.0.0.1", silent.getsockname()[1], "ARCHIVE", connect_timeout=1.0)) as node:
            assert _storescu(node.port, files).returncode == 0
            # well inside the OS's connect wait (~2 minutes), which is what the worker waited before
            assert _wait_for(lambda: node.stats.not_forwarded, timeout=30), node.stats
    assert node.stats.segmented and node.stats.forwarded == []
    [error] = _edgeseg_errors(caplog)
    assert "SEG not forwarded: could not associate with ARCHIVE@127.0.0.1" in error.getMessage()


def test_a_series_no_seg_can_be_made_of_is_one_log_line_and_never_reaches_the_model(running_node, tmp_path, caplog):
    other_study = tmp_path / "other-study"
    other_study.mkdir()
    for k, path in enumerate(sorted(SERIES.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        if k == 1:
            ds.StudyInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(other_study / path.name)
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    with running_node(wrap=_HeldSegmenter) as node:
        held = node.segmenter
        held.go.set()
        assert _storescu(node.port, sorted(other_study.iterdir())).returncode == 0
        assert _wait_for(lambda: node.stats.failed), node.stats
    assert not held.started.is_set() and node.stats.segmented == [] and not (tmp_path / "out").exists()
    [error] = _edgeseg_errors(caplog)
    assert error.exc_info is None and "a DICOM SEG covers images of one study" in error.getMessage()


def test_rle_compressed_images_are_received_and_segmented(running_node, tmp_path):
    """A peer holding its CT images RLE-compressed (and proposing only that, as dcmtk's storescu
    -xr -R does) sends them as they are: the node negotiates every transfer syntax its reader
    decodes, and the SEG references the images sent."""
    rle = tmp_path / "rle"
    rle.mkdir()
    for path in sorted(SERIES.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.compress(pydicom.uid.RLELossless)
        ds.save_as(rle / path.name)
    with running_node() as node:
        done = subprocess.run(["storescu", "-xr", "-R", "-aec", "EDGESEG", "127.0.0.1", str(node.port),
                               *map(str, sorted(rle.iterdir()))], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "Failed" not in done.stderr, done.stderr
        assert _wait_for(lambda: node.stats.segmented), node.stats
    uid = pydicom.dcmread(next(rle.iterdir())).SeriesInstanceUID
    seg = pydicom.dcmread(tmp_path / "out" / f"{uid}.seg.dcm")
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(p).SOPInstanceUID for p in rle.iterdir()}


@pytest.mark.parametrize("title", ["ÄRZT", "A\\B", "   ", "X" * 17])
def test_a_forward_ae_title_no_peer_can_be_called_by_is_refused_at_start(serve_bundle, tmp_path, title,
                                                                        assert_one_line_error):
    import sys

    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "listen", str(serve_bundle), "--out",
                           str(tmp_path / "out"), "--forward", f"127.0.0.1:104:{title}"],
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(done, "AE title must be 1..16 printable ASCII characters")
    assert not (tmp_path / "out").exists()


def test_an_out_folder_that_cannot_be_written_is_one_log_line_and_the_node_goes_on(running_node, tmp_path, caplog):
    """--out became a file after the start (or filled up, or was unmounted): the SEG cannot be
    written; the log says so in one line, without a traceback, and the node goes on serving."""
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    with running_node(out=blocked) as node:
        assert _storescu(node.port, sorted(SERIES.glob("*.dcm"))).returncode == 0
        assert _wait_for(lambda: node.stats.failed), node.stats
        echo = subprocess.run(["echoscu", "-aec", "EDGESEG", "127.0.0.1", str(node.port)], capture_output=True,
                              text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
    [error] = _edgeseg_errors(caplog)
    assert error.exc_info is None and "not segmented" in error.getMessage() and str(blocked) in error.getMessage()
    assert blocked.read_text() == "not a folder"


@pytest.mark.parametrize("options,fragment", [
    ([], "needs --out, --forward or both"),
    (["--out", "OUT", "--ae-title", "X" * 17], "AE title must be 1..16 printable ASCII characters"),
    (["--out", "OUT", "--allow-calling", "A\\B"], "AE title must be 1..16 printable ASCII characters"),
    (["--out", "OUT", "--port", "BUSY"], "cannot listen on 127.0.0.1:"),
])
def test_settings_no_node_can_run_with_are_refused_before_the_bundle_is_read(tmp_path, options, fragment,
                                                                            assert_one_line_error):
    """The bundle named is not one: the error must be about the setting, which is checked first (a bundle's
    load can take a backend probe, and its log lines would precede the error)."""
    import socket
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        argv = [str(busy.getsockname()[1]) if o == "BUSY" else str(tmp_path / "out") if o == "OUT" else o
                for o in options]
        done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "listen", str(tmp_path / "no-bundle"), *argv],
                              capture_output=True, text=True, timeout=120)
    assert_one_line_error(done, fragment)
    assert not (tmp_path / "out").exists()


def test_listen_s_defaults_are_the_node_s():
    """The command keeps its defaults beside its options (importing the node would load pynetdicom
    for every command); they must be the node's own."""
    import inspect

    from edgeseg.cli.listen import command

    node_defaults = {name: p.default for name, p in inspect.signature(DicomNode.__init__).parameters.items()
                     if p.default is not inspect.Parameter.empty}
    options = {p.name: p.default for p in command.params if not getattr(p, "is_flag", False)}
    shared = sorted(set(node_defaults) & set(options) - {"out", "forward", "unsent"})
    assert "max_series" in shared
    for name in shared:
        assert options[name] == node_defaults[name], name


def test_a_series_of_differing_slice_thickness_gets_a_seg_stating_each(running_node, tmp_path):
    """Slices of two thicknesses: the series failed before the model ran (one error line "DICOM
    files A.dcm and B.dcm have SliceThickness 1.25 and 7.5; a DICOM SEG states one ...", counted
    failed, no SEG), as highdicom shares the first source's Pixel Measures. Now it is segmented, and
    each frame of its SEG states the thickness of the slice it references (read with pydicom)."""
    series = tmp_path / "series"
    series.mkdir()
    for k, path in enumerate(sorted(SERIES.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        if k == 1:
            ds.SliceThickness = "7.5"
        ds.save_as(series / path.name)
    uid = str(ds.SeriesInstanceUID)
    with running_node() as node:
        assert _storescu(node.port, sorted(series.iterdir())).returncode == 0
        assert _wait_for(lambda: node.stats.segmented or node.stats.failed), node.stats
    assert node.stats.segmented == [uid] and node.stats.failed == [], node.stats
    seg = pydicom.dcmread(tmp_path / "out" / f"{uid}.seg.dcm")
    thickness = {source.SOPInstanceUID: float(source.SliceThickness) for source in map(pydicom.dcmread, series.iterdir())}
    stated = [(float(frame.PixelMeasuresSequence[0].SliceThickness),
               thickness[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID])
              for frame in seg.PerFrameFunctionalGroupsSequence]
    assert sorted(stated) == [(1.25, 1.25), (1.25, 1.25), (7.5, 7.5)]


def test_an_image_the_node_fails_storing_keeps_its_series_from_being_segmented_without_it(running_node, tmp_path,
                                                                                         caplog):
    """An unexpected failure storing an image (here: its earlier copy gone from the work folder
    when it is sent again, so the check of its position cannot read it) was answered 0xC211 but
    not noted as refused: the series was segmented from the other slices, its SEG missing one.
    Noted, the series is not segmented without it."""
    from tests.serve.test_dicom_node_whole_series import _association, _send, _slices

    slices = _slices()
    series, last = str(slices[0].SeriesInstanceUID), str(slices[-1].SOPInstanceUID)
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    with running_node(idle=1.0) as node:
        assoc = _association(node.port)
        try:
            assert _send(assoc, slices) == [0, 0, 0]
            (tmp_path / "work" / series / f"{last}.dcm").unlink()
            assert _send(assoc, slices[-1:]) == [0xC211]
        finally:
            assoc.release()
        assert _wait_for(lambda: node.stats.failed or node.stats.segmented), node.stats
    assert node.stats.failed == [series] and node.stats.segmented == [], node.stats
    assert not (tmp_path / "out").is_dir() or not list((tmp_path / "out").glob("*.seg.dcm"))  # no SEG of 2 slices
    assert "the node failed storing it: FileNotFoundError" in caplog.text
