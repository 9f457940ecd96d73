"""`edgeseg serve` and `edgeseg listen` on a disk that fills up while they run: the request or the
image gets a failure status that says so, the log one line naming the file, nothing half-written
stays (no upload folder, no series folder, no half line in the audit log), and once there is room
again the server answers the next request as before.

The disk is full for real: the server runs with SIGXFSZ ignored and its file size limit
(RLIMIT_FSIZE, lowered and raised again from here with prlimit) makes a write past it fail with
EFBIG, as a full disk makes it fail with ENOSPC.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.serve.http_util import http_request
from tests.serve.test_dicom_node import DCMTK, SERIES, _storescu

pydicom = pytest.importorskip("pydicom")


def _ignore_sigxfsz() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _limit(proc: subprocess.Popen, size: int) -> None:
    """Files of ``proc`` limited to ``size`` bytes from now on (the hard limit stays: raised again later)."""
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


@contextlib.contextmanager
def _server(command: list[str], log: Path, ready, tmp: Path):
    """``edgeseg COMMAND`` with its temporary files under ``tmp``, yielded once ``ready()``; its
    stderr goes to ``log``. Stopped with SIGINT at the end (killed if it does not stop)."""
    env = {**__import__("os").environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", *command], stdout=subprocess.DEVNULL, stderr=err,
                                env=env, preexec_fn=_ignore_sigxfsz)
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield proc
        assert proc.poll() is None, log.read_text()  # up all along
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _audit_lines(path: Path) -> list[dict]:
    """Every line of the audit log as JSON (a half line run into the next one fails here)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def _npy_upload() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 64, 64), np.int16))  # 16 KiB of pixels
    return buffer.getvalue()


@pytest.fixture
def running_serve(serve_bundle, tmp_path, free_port):
    port = free_port()
    (tmp_path / "tmp").mkdir()

    def ready() -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                                                  timeout=2) as reply:
            return reply.status == 200
        return False

    command = ["serve", str(serve_bundle), "--port", str(port), "--backend", "onnxruntime:fp32",
               "--audit-log", str(tmp_path / "audit.jsonl")]
    with _server(command, tmp_path / "stderr.txt", ready, tmp_path / "tmp") as proc:
        yield proc, f"127.0.0.1:{port}"


def _segment(url: str) -> tuple[int, bytes]:
    status, _, body = http_request(url, "POST", "/v1/segment?format=npy", _npy_upload())
    return status, body


def _infer(url: str) -> tuple[int, bytes]:
    body = {"inputs": [{"name": "hu", "datatype": "INT16", "shape": [32, 32], "data": [0] * 1024}]}
    status, _, answer = http_request(url, "POST", "/v2/models/edgeseg-pipeline/infer", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    return status, answer


def test_an_upload_the_disk_cannot_take_is_507_naming_the_file_in_the_log(running_serve, tmp_path):
    """It was a 500 "internal error: OSError: [Errno 27] File too large" with a traceback in
    the log that named no file."""
    proc, url = running_serve
    audit = tmp_path / "audit.jsonl"
    assert _segment(url)[0] == 200
    _limit(proc, max(audit.stat().st_size + 4096, 8192))  # the audit line fits, the 16 KiB upload does not
    status, body = _segment(url)
    assert status == 507, body
    assert json.loads(body) == {"error": "the server has no room left on disk to store the upload; retry later"}
    _limit(proc, resource.RLIM_INFINITY)
    assert _segment(url)[0] == 200
    assert list((tmp_path / "tmp").glob("edgeseg-upload-*")) == []
    errors = [line for line in (tmp_path / "stderr.txt").read_text().splitlines() if "upload" in line]
    [error] = errors
    assert error.startswith(f"POST /v1/segment: cannot write the upload's file {tmp_path / 'tmp'}/edgeseg-upload-")
    assert error.endswith("/body: File too large")
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()
    assert [line["status"] for line in _audit_lines(audit)] == [200, 507, 200]


def test_an_audit_log_the_disk_cannot_take_is_507_and_never_half_a_line(running_serve, tmp_path):
    """An audited server hands out no answer it could not record; the line the disk took part of
    was left in the log with the next line run into it, and the request was a 500 with a
    traceback ("Exception in ASGI application")."""
    proc, url = running_serve
    audit = tmp_path / "audit.jsonl"
    assert _infer(url)[0] == 200
    _limit(proc, audit.stat().st_size + 100)  # part of the next line fits
    status, body = _infer(url)
    assert status == 507 and json.loads(body) == {
        "error": "the server cannot record the request in its audit log: File too large"}
    _limit(proc, resource.RLIM_INFINITY)
    assert _infer(url)[0] == 200
    assert [line["status"] for line in _audit_lines(audit)] == [200, 200]
    log = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in log
    assert log.count(f"cannot append to the audit log {audit}: File too large") == 1


pytestmark_dicom = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu) is not installed: apt-get install dcmtk")


@pytest.fixture
def running_listen(serve_bundle, tmp_path, free_port):
    """``edgeseg listen`` writing SEGs to tmp_path/out, its work folder under tmp_path/tmp, at most
    one series in flight (a series slot a failure kept would refuse every later series). Its idle
    of 3 s, not less: a series counts as complete after that long without an image, and a loaded
    machine can take a second between two images of one storescu call; the part after such a gap
    would be a second series, refused for the one slot."""
    port = free_port()
    (tmp_path / "tmp").mkdir()

    def ready() -> bool:
        return subprocess.run(["echoscu", "-aec", "EDGESEG", "127.0.0.1", str(port)], capture_output=True,
                              timeout=30).returncode == 0

    def start(audit_text: str = ""):
        (tmp_path / "audit.jsonl").write_text(audit_text)
        command = ["listen", str(serve_bundle), "--port", str(port), "--out", str(tmp_path / "out"), "--idle", "3",
                   "--max-series", "1", "--backend", "onnxruntime:fp32", "--audit-log", str(tmp_path / "audit.jsonl")]
        return _server(command, tmp_path / "stderr.txt", ready, tmp_path / "tmp")

    start.port = port
    return start


def _wait_for_segs(out: Path, count: int) -> list[Path]:
    deadline = time.monotonic() + 60
    while len(segs := sorted(out.glob("*.seg.dcm"))) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return segs


@pytestmark_dicom
def test_an_image_the_disk_cannot_take_is_refused_out_of_resources(running_listen, tmp_path):
    """It was answered 0xC211 (pynetdicom's answer to a handler that raised: "cannot
    understand"), with nothing in edgeseg's log and the new series' folder left behind."""
    files = sorted(SERIES.glob("*.dcm"))
    with running_listen() as proc:
        _limit(proc, 100_000)  # an image of the series takes 526 KB
        refused = subprocess.run(["storescu", "-d", "-aec", "EDGESEG", "127.0.0.1", str(running_listen.port),
                                  str(files[0])], capture_output=True, text=True, timeout=60)
        assert "Refused: Out of resources" in refused.stderr, refused.stderr[-3000:]
        # with an Error Comment saying why, as every failure but 0x0122
        assert "(0000,0902) LO [cannot store it: File too large]" in refused.stderr, refused.stderr[-3000:]
        [work] = (tmp_path / "tmp").glob("edgeseg-listen-*")
        assert list(work.iterdir()) == [work / "received"]  # the node's folder for Enhanced CT files, empty
        assert list((work / "received").iterdir()) == []
        _limit(proc, resource.RLIM_INFINITY)
        stored = _storescu(running_listen.port, files)
        assert stored.returncode == 0 and "OutOfResources" not in stored.stderr, stored.stderr
        assert len(_wait_for_segs(tmp_path / "out", 1)) == 1
    log = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in log
    [error] = [line for line in log.splitlines() if "refused image" in line]
    sop_uid = pydicom.dcmread(files[0]).SOPInstanceUID
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert error == f"refused image {sop_uid}: cannot store it in {work / series_uid / sop_uid}.dcm: File too large"


def _store_once_the_slot_is_free(port: int, files: list[Path]) -> None:
    """Send ``files`` until the node takes them: its one series slot is free a moment after the
    SEG of the series before is written (it was never freed again, and every try was refused)."""
    deadline = time.monotonic() + 30
    while "OutOfResources" in (stored := _storescu(port, files)).stderr and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stored.returncode == 0 and "OutOfResources" not in stored.stderr, stored.stderr


@pytestmark_dicom
def test_an_audit_log_the_disk_cannot_take_costs_its_lines_not_the_series(running_listen, tmp_path):
    """The series line that could not be written was taken for the series' failure: the series'
    slot stayed taken (with --max-series 1 every later series was refused), and the log held half
    a line with the next one run into it."""
    files = sorted(SERIES.glob("*.dcm"))
    earlier = ('{"event":"earlier","pad":"' + "x" * 1000 + '"}\n') * 1000  # 1 MB: images fit beside its limit
    with running_listen(earlier) as proc:
        _limit(proc, len(earlier) + 100)
        assert _storescu(running_listen.port, files).returncode == 0
        assert len(_wait_for_segs(tmp_path / "out", 1)) == 1
        _limit(proc, resource.RLIM_INFINITY)
        _store_once_the_slot_is_free(running_listen.port, files)
        assert len(_wait_for_segs(tmp_path / "out", 2)) == 2
    lines = _audit_lines(tmp_path / "audit.jsonl")[1000:]
    assert [line["event"] for line in lines if line["event"] != "association" or line["calling_ae"] != "ECHOSCU"] == \
        ["association", "series"]
    assert lines[-1]["outcome"] == "segmented"
    log = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in log and "not segmented" not in log
    lost = [line for line in log.splitlines() if "cannot append to the audit log" in line]
    assert lost and all(line.startswith(f"cannot append to the audit log {tmp_path / 'audit.jsonl'}: File too large; its ")
                        for line in lost)
