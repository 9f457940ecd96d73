"""Ctrl-C and SIGTERM to ``edgeseg listen`` at the points of its start and stop the node's own
tests do not reach: while the model loads, a second signal right after the first, and a signal
while the node is being made.

Each ``edgeseg listen`` here runs in a fresh interpreter whose profile function sends the process
its real signal at the point named, so Python's own signal machinery delivers it. Before: the
handlers were installed only after the model loaded (SIGTERM then killed the process, exit 143,
and Ctrl-C ended in click's "Aborted!", exit 1, against the docs' "the same stop"); a second
signal before the stop had switched the handlers to abandon skipped the stop and left the work
folder; a signal while the node was being made left its empty edgeseg-listen-* folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from edgeseg.serve.dicom_node import DicomNode

pytest.importorskip("pynetdicom")

SIGNALLED = r"""
import os, signal, sys, threading, time

when = sys.argv.pop(1)
listen = os.path.join("cli", "listen.py")

def hook(frame, event, arg):
    code = frame.f_code
    if when == "loading" and event == "call" and code.co_name == "load" \
            and code.co_filename.endswith(os.path.join("runtime", "segmenter.py")):
        sys.setprofile(None)
        os.kill(os.getpid(), signal.SIGTERM)
    elif when == "twice" and event == "c_call" and arg is time.sleep and code.co_filename.endswith(listen):
        # listening: a SIGINT and a SIGTERM at once, held back until both are pending; Python runs
        # the handler of one, and of the other at its next check, while the first unwinds
        sys.setprofile(None)
        both, main = {signal.SIGINT, signal.SIGTERM}, threading.main_thread().ident
        signal.pthread_sigmask(signal.SIG_BLOCK, both)
        signal.pthread_kill(main, signal.SIGINT)
        signal.pthread_kill(main, signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, both)

sys.setprofile(hook)
sys.argv[0] = "edgeseg"
from edgeseg.cli.main import cli
cli()
"""


@pytest.mark.parametrize("when", ["loading", "twice"])
def test_a_signal_while_the_model_loads_or_a_second_one_at_once_is_a_stop(serve_bundle, tmp_path, free_port, when):
    """Exit 0, no traceback, no "Aborted!", no work folder left in TMPDIR."""
    (tmp_path / "tmp").mkdir()
    done = subprocess.run([sys.executable, "-c", SIGNALLED, when, "listen", str(serve_bundle), "--port",
                           str(free_port()), "--out", str(tmp_path / "out"), "--backend", "onnxruntime:fp32"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TMPDIR=str(tmp_path / "tmp"), OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Aborted" not in done.stderr, done.stderr
    assert list((tmp_path / "tmp").iterdir()) == []
    if when == "twice":  # it was listening when the first came
        assert "listening on" in done.stdout, done.stdout


def _ours(code) -> bool:
    """Whether a call from ``code`` is a point of the node's making: the calls edgeseg's code makes."""
    return f"{os.sep}edgeseg{os.sep}" in code.co_filename


class _InterruptAfterFolder:
    """A profile function raising KeyboardInterrupt at the ``n``-th call edgeseg makes (in this thread) once
    tempfile.mkdtemp has returned: an interrupt at a point of the node's making after its work
    folder exists; ``fired`` says whether it came before the making ended."""

    def __init__(self, n: int) -> None:
        self.left, self.made, self.fired = n, False, False

    def __call__(self, frame, event, arg) -> None:
        if not self.made:
            self.made = event == "return" and frame.f_code.co_name == "mkdtemp"
        elif (event == "call" and frame.f_back is not None and _ours(frame.f_back.f_code)) \
                or (event == "c_call" and _ours(frame.f_code)):
            if not self.left:
                self.fired = True
                raise KeyboardInterrupt  # Python turns the profiling off with it
            self.left -= 1


def test_an_interrupt_while_the_node_is_made_leaves_no_work_folder(serve_bundle, tmp_path, free_port, monkeypatch):
    from edgeseg.runtime.segmenter import Segmenter

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp makes the node's folder
    left, point = [], 0
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
        while True:
            interrupt = _InterruptAfterFolder(point)
            sys.setprofile(interrupt)
            try:
                node = DicomNode(segmenter, port=free_port(), out=tmp_path / "out", idle=60)
            except KeyboardInterrupt:
                pass
            finally:
                sys.setprofile(None)
            if not interrupt.fired:  # made whole: every point was tried
                node.stop()
                break
            left += [f"point {point}: {p.name}" for p in tmp_path.glob("edgeseg-listen-*")]
            point += 1
    assert left == [] and point > 5
    assert list(tmp_path.glob("edgeseg-listen-*")) == []
