"""What a flood of idle TCP connections costs the DICOM node, and whether a scanner still gets in.

Starts a DicomNode in a child process (no model is loaded: connections never reach one), opens
``--connections`` sockets to it that send nothing (from 127.0.0.2, a loopback address other than
the scanner's), and reports the node's threads, resident memory and open file descriptors from
/proc before, during and after the flood, and whether dcmtk's echoscu (from 127.0.0.1) is answered
during it. Node options (``--max-connections`` and the like, where the node has them) are passed
as ``--node KEY=VALUE``.

    python benchmarks/dicom_idle_connections.py --connections 500
    python benchmarks/dicom_idle_connections.py --connections 500 --node max_connections_per_host=8
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def _proc(pid: int) -> dict:
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            fields[key] = int(value.split()[0])
    fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return {"threads": fields["Threads"], "rss_mib": round(fields["VmRSS"] / 1024, 1), "fds": fields["fds"]}


def _serve(port: int, options: dict) -> None:
    from edgeseg.serve.dicom_node import DicomNode

    with tempfile.TemporaryDirectory() as out:
        node = DicomNode(object(), port=port, out=out, host="0.0.0.0", **options)
        node.start()
        print("ready", flush=True)
        sys.stdin.read()  # until the parent closes our stdin
        node.stop()


def _echo(port: int) -> bool:
    done = subprocess.run(["echoscu", "-to", "10", "-ta", "10", "-aec", "EDGESEG", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)
    return done.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--node", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.node)}
    if args.serve is not None:
        return _serve(args.serve, options)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node = subprocess.Popen([sys.executable, __file__, "--serve", str(port),
                             *(f"--node={item}" for item in args.node)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert node.stdout.readline().strip() == "ready"
        time.sleep(1)
        report = {"before": _proc(node.pid)}
        socks, closed_at_once, opening = [], 0, time.monotonic()
        for _ in range(args.connections):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", port))
            socks.append(sock)
        opened = time.monotonic() - opening
        time.sleep(2)
        for sock in socks:  # a connection the node closed reads as ended (or reset) at once
            sock.setblocking(False)
            try:
                closed_at_once += sock.recv(1) == b""
            except BlockingIOError:  # nothing to read yet: the node holds it open
                continue
            except OSError:
                closed_at_once += 1
        report["flood"] = {**_proc(node.pid), "seconds_to_open": round(opened, 1), "closed_by_node": closed_at_once, "echoscu_answered": _echo(port)}
        for sock in socks:
            sock.close()
        started = time.monotonic()
        while _proc(node.pid)["threads"] > report["before"]["threads"] and time.monotonic() - started < 60:
            time.sleep(0.1)
        report["after_close"] = {**_proc(node.pid), "seconds_to_release": round(time.monotonic() - started, 1),
                                 "echoscu_answered": _echo(port)}
        print(json.dumps({"connections": args.connections, "node_options": options, **report}, indent=1))
    finally:
        node.stdin.close()
        node.wait(timeout=60)


if __name__ == "__main__":
    main()
