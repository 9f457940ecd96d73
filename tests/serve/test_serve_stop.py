"""`edgeseg serve` stopped by SIGTERM says so and exits 143, like every edgeseg command (uvicorn
takes the signal for its graceful shutdown and treats it as its Ctrl-C), and a stalled client
does not keep it up."""

from __future__ import annotations

import signal
import socket
import time


def test_sigterm_stops_serve_with_one_line_and_143(serve_bundle, serve_process):
    with serve_process(serve_bundle, "--backend", "onnxruntime:fp32") as (proc, _):
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "edgeseg: stopped (SIGTERM)"
    assert "Traceback" not in stderr


def test_a_client_stalled_mid_body_does_not_hold_up_the_stop(serve_bundle, serve_process):
    """A client sends the headers and 10 of 100000 body bytes, then nothing: after SIGTERM the
    server waits for requests in flight at most their --timeout (+5 s), then stops anyway."""
    with serve_process(serve_bundle, "--backend", "onnxruntime:fp32", "--timeout", "1") as (proc, port):
        with socket.create_connection(("127.0.0.1", port)) as stalled:
            stalled.sendall(b"POST /v2/models/edgeseg/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 100000\r\n\r\n{\"inputs\":")
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            # --timeout 1 gives 6 s of grace; the stalled client would otherwise hold the server for good
            _, stderr = proc.communicate(timeout=40)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "edgeseg: stopped (SIGTERM)"
