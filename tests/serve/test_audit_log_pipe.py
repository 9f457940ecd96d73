"""``--audit-log`` on a pipe: ``/dev/stdout`` under a container runtime or a service manager is
one, and so is a FIFO a log shipper reads. A pipe has no end to seek to, and the writer used to
seek before every line: each line failed (ESPIPE) and was lost, and ``serve`` answered every
request 500. Lines now go through the pipe whole, in order, one write each, under the same lock
as a file's, so that two processes' lines longer than PIPE_BUF never run into each other."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgeseg.errors import DataError
from edgeseg.serve.audit import AuditLog, AuditLogError

WRITER = textwrap.dedent("""
    import sys
    from edgeseg.serve.audit import AuditLog

    path, who, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    log = AuditLog(path, {"manifest_sha256": "0" * 64})
    print("ready", flush=True)
    sys.stdin.readline()
    for n in range(count):  # 20 KB lines: five times PIPE_BUF, so one write is no longer atomic
        log.record("http_request", writer=who, n=n, path="/v2/models/edgeseg/infer" + "x" * 20000)
""")


def test_two_processes_audit_through_one_pipe_line_by_line(tmp_path):
    fifo = tmp_path / "audit.pipe"
    os.mkfifo(fifo)
    shipped = tmp_path / "shipped.jsonl"
    # a read end held open here (it never reads) lets the writers open the FIFO before cat has
    held = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    with open(shipped, "wb") as out:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=out)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
        count = 150
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(fifo), who, str(count)], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for who in ("a", "b")]
        for proc in writers:
            assert proc.stdout.readline() == "ready\n", proc.communicate()[1]
        for proc in writers:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in writers:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        os.close(held)
        reader.wait(timeout=60)
    lines = [json.loads(line) for line in shipped.read_bytes().decode().splitlines()]  # a torn line fails here
    for who in ("a", "b"):
        assert [line["n"] for line in lines if line["writer"] == who] == list(range(count))
    assert len(lines) == 2 * count


def test_a_pipe_nothing_reads_is_refused_at_start_not_waited_on(tmp_path):
    """Opening a FIFO for writing waits for a reader: the server would hang before listening."""
    fifo = tmp_path / "audit.pipe"
    os.mkfifo(fifo)
    with pytest.raises(DataError) as refused:
        AuditLog(fifo)
    assert str(refused.value) == f"--audit-log {fifo}: nothing reads it (a FIFO without a reader)"


def test_a_pipe_whose_reader_left_loses_the_line_with_an_error(tmp_path):
    fifo = tmp_path / "audit.pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    log = AuditLog(fifo)
    try:
        log.record("http_request", n=0)
        assert json.loads(os.read(reader, 1 << 16))["n"] == 0
        os.close(reader)
        with pytest.raises(AuditLogError, match=f"cannot append to the audit log {fifo}: Broken pipe"):
            log.record("http_request", n=1)
    finally:
        log.close()


def _fill_until_refused(log: AuditLog, size: int) -> list[str]:
    """Record lines of about ``size`` bytes into ``log`` until one is refused, in a thread, so
    that a writer that blocks forever fails the test instead of hanging it; the errors seen."""
    errors: list[str] = []

    def fill() -> None:
        for n in range(10_000):
            try:
                log.record("http_request", n=n, path="x" * size)
            except AuditLogError as exc:
                errors.append(str(exc))
                return

    writer = threading.Thread(target=fill, daemon=True)
    writer.start()
    writer.join(120)
    assert not writer.is_alive(), "the audit log waited for a pipe its reader does not empty"
    return errors


def _drain(fd: int) -> bytes:
    got = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 1 << 16):
            got += chunk
    return got


@pytest.mark.parametrize("size", [1000, 20000], ids=["short-lines", "lines-past-PIPE_BUF"])
def test_a_reader_that_stalls_costs_lines_not_a_stuck_writer(tmp_path, size):
    """A log driver that falls behind leaves the pipe full: the writer used to block on it for
    good (serve's event loop with it, listen's accept thread). Now a line waits PIPE_WAIT for room
    and is then refused; once the reader catches up, lines go through again, whole: a line cut
    off partway (past PIPE_BUF a pipe takes part of one) is ended before the next starts."""
    fifo = tmp_path / "audit.pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    log = AuditLog(fifo)
    try:
        errors = _fill_until_refused(log, size)
        assert errors == [f"cannot append to the audit log {fifo}: its reader takes nothing more"]
        shipped = _drain(reader)
        log.record("http_request", n="after", path="y")
        shipped += _drain(reader)
    finally:
        os.close(reader)  # first: a writer blocked on the pipe (the old code) is let go, and its lock
        log.close()
    assert_whole_lines_then_after(shipped)


def assert_whole_lines_then_after(shipped: bytes) -> None:
    """``shipped`` is lines 0, 1, ... in order, then the line "after": each whole, but for lines
    cut off partway (a stalled reader), each ended before the next, and never the last one."""
    pieces = shipped.decode().split("\n")
    assert pieces[-1] == ""
    whole = []
    for piece in pieces[:-1]:
        try:
            whole.append(json.loads(piece))
        except json.JSONDecodeError:  # only a line cut off partway, and only before the last one
            assert piece.startswith('{"time":') and piece is not pieces[-2]
    assert whole[-1]["n"] == "after"
    assert [line["n"] for line in whole[:-1]] == list(range(len(whole) - 1))


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.status
    except urllib.error.HTTPError as answer:
        return answer.code


def test_serve_answers_probes_while_its_audit_pipe_is_full(serve_bundle, serve_process, tmp_path):
    """serve wrote its audit line on the event loop: with the pipe full, that write held up every
    other answer, /v2/health/live included, for as long as the reader stalled. Now the request
    whose line finds no room is answered 500 (an audited server hands out no answer it cannot
    record) and the probes go on being answered."""
    fifo = tmp_path / "audit.pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read: a stalled log driver
    try:
        with serve_process(serve_bundle, "--audit-log", str(fifo)) as (proc, port):
            base = f"http://127.0.0.1:{port}"
            statuses = []
            while 500 not in statuses and len(statuses) < 2000:  # each line is about 400 bytes: 64 KiB fill
                statuses.append(_get(f"{base}/v2/models/edgeseg"))
            assert statuses[-1] == 500 and set(statuses[:-1]) == {200}
            assert _get(f"{base}/v2/health/live") == 200
            assert _get(f"{base}/v2/health/ready") == 200
            assert proc.poll() is None
    finally:
        os.close(reader)
