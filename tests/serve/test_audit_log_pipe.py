"""``--audit-log`` on a pipe: ``/dev/stdout`` under a container runtime or a service manager is
one, and so is a FIFO a log shipper reads. A pipe has no end to seek to, and the writer used to
seek before every line: each line failed (ESPIPE) and was lost, and ``serve`` answered every
request 500. Lines now go through the pipe whole, in order, one write each, under the same lock
as a file's, so that two processes' lines longer than PIPE_BUF never run into each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
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
    assert str(refused.value) == (f"--audit-log {fifo}: nothing reads it (a FIFO without a reader, or a socket, "
                                  "which cannot be opened by name)")


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
