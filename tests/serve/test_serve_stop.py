"""`edgeseg serve` stopped by SIGTERM says so and exits 143, like every edgeseg command (uvicorn
takes the signal for its graceful shutdown and treats it as its Ctrl-C)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request


def test_sigterm_stops_serve_with_one_line_and_143(serve_bundle):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "serve", str(serve_bundle), "--port", str(port),
                             "--backend", "onnxruntime:fp32"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "edgeseg serve did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "edgeseg: stopped (SIGTERM)"
    assert "Traceback" not in stderr


def test_a_client_stalled_mid_body_does_not_hold_up_the_stop(serve_bundle):
    """A client sends the headers and 10 of 100000 body bytes, then nothing: after SIGTERM the
    server waits for requests in flight at most their --timeout (+5 s), then stops anyway."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "serve", str(serve_bundle), "--port", str(port),
                             "--backend", "onnxruntime:fp32", "--timeout", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stalled = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "edgeseg serve did not start"
            time.sleep(0.2)
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /v2/models/edgeseg/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100000\r\n\r\n{\"inputs\":")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        # --timeout 1 gives 6 s of grace; the stalled client would otherwise hold the server for good
        _, stderr = proc.communicate(timeout=40)
    finally:
        if stalled is not None:
            stalled.close()
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "edgeseg: stopped (SIGTERM)"
