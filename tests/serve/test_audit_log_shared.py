"""Two processes appending to one ``--audit-log`` (two servers, or a server and ``edgeseg listen``):
every line stays whole and every line a writer was told it wrote is there, even while one of them
has no room left (its partial line is cut off again, and the cut must not take the other's lines).

The disk is full for real for one writer only: it runs with SIGXFSZ ignored and a file size limit
(RLIMIT_FSIZE) below where the log ends up, so its appends fail with EFBIG once the other has
grown the file past it, as a full disk makes them fail with ENOSPC.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

WRITER = textwrap.dedent("""
    import resource, signal, sys
    from edgeseg.serve.audit import AuditLog, AuditLogError

    path, who, limit, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    log = AuditLog(path, {"manifest_sha256": "0" * 64})
    print("ready", flush=True)
    sys.stdin.readline()  # both start appending together, into a log still empty
    written = refused = 0
    for n in range(count):
        try:
            log.record("http_request", writer=who, n=n, path="/v2/models/edgeseg/infer" + "x" * (n % 61))
            written += 1
        except AuditLogError:
            refused += 1
    print(written, refused)
""")


def test_two_processes_share_one_audit_log_while_one_has_no_room(tmp_path):
    """Each line was one O_APPEND write already, but a writer out of room cut the log back to
    where it had found its end, taking the lines the other process appended meanwhile (and
    leaving half of one, run into the next)."""
    log = tmp_path / "audit.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    count = 8000  # the one out of room tries five times as often: its failed appends overlap all of the other's
    writers = {who: subprocess.Popen([sys.executable, "-c", WRITER, str(log), who, str(limit), str(tries)],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
               for who, limit, tries in (("full", 64 << 10, 5 * count), ("roomy", 0, count))}
    # On a busy machine one interpreter could start so late that the other had already grown the
    # log past the first one's limit: it then wrote nothing at all, and its failures overlapped
    # none of the other's appends. Both wait until both have the log open.
    for who, proc in writers.items():
        assert proc.stdout.readline() == "ready\n", proc.communicate()[1]
    for proc in writers.values():
        proc.stdin.write("go\n")
        proc.stdin.flush()
    told = {}
    for who, proc in writers.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        told[who] = tuple(map(int, out.split()))
    assert told["roomy"] == (count, 0)
    assert told["full"][1] > 0  # the limit was reached: the case under test happened
    lines = [json.loads(line) for line in log.read_bytes().decode().splitlines()]  # a torn line fails here
    found = Counter(line["writer"] for line in lines)
    assert {who: found[who] for who in told} == {who: written for who, (written, _) in told.items()}
    assert sorted(line["n"] for line in lines if line["writer"] == "roomy") == list(range(count))
