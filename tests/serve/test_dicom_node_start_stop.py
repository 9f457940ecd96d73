"""A stop (Ctrl-C, SIGTERM) that comes at any point of the DICOM node's start ends it at once.

The node's stop shut the accept loop down by waiting for it to say it had ended; an interrupt
that came once the port was bound and before the loop's thread was started left nothing to say
so, and the stop waited for good (a second signal only cuts the segmenting short). An interrupt
is a KeyboardInterrupt raised in the main thread where Python runs its signal handler: as a
Python function is entered, or as a C function returns to Python. ``_interrupt_at`` raises it at
the n-th such point once the listening socket is bound, for every n up to the end of the start,
and the stop must return and leave neither the port bound nor a thread of the node running.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time

import pytest

from edgeseg.serve.dicom_node import DicomNode

pytest.importorskip("pynetdicom")

STOP_BOUND = 30  # seconds a stop may take here; it takes well under one


def _points(code) -> bool:
    """Whether an interrupt at a call made from, or a C function's return to, code of ``code``
    counts as a point of the start here: the node's own code, and threading's ``Thread.start``
    (an interrupt there may come once the thread is made to run). Every state the start passes
    through is met at one of those; the points inside the libraries between them add none."""
    return "/edgeseg/" in code.co_filename or (code.co_name == "start" and code.co_filename.endswith("threading.py"))


class _InterruptAfterBind:
    """A profile function raising KeyboardInterrupt at the ``n``-th point of the start (above) in
    this thread after the listening socket is bound (socketserver's ``server_bind`` returned);
    ``fired`` says whether it came before the start ended."""

    def __init__(self, n: int) -> None:
        self.left, self.bound, self.fired = n, False, False

    def __call__(self, frame, event, arg) -> None:
        if not self.bound:
            self.bound = event == "return" and frame.f_code.co_name == "server_bind"
        elif ((event == "call" and frame.f_back is not None and _points(frame.f_back.f_code))
              or (event == "c_return" and _points(frame.f_code))):
            if not self.left:
                self.fired = True
                raise KeyboardInterrupt  # Python turns the profiling off with it
            self.left -= 1


def _node_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("edgeseg-listen")}


def _ended(thread: threading.Thread) -> bool:
    """Whether ``thread`` ends within STOP_BOUND s: one that an interrupt let start without its
    ``start()`` returning first gets under way; one made and never started counts as ended."""
    deadline = time.monotonic() + STOP_BOUND
    while thread.ident is not None and time.monotonic() < deadline:
        try:
            thread.join(max(0.0, deadline - time.monotonic()))
            return not thread.is_alive()
        except RuntimeError:  # started, not under way yet
            time.sleep(0.05)
    return thread.ident is None or not thread.is_alive()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def segmenter(serve_bundle):
    from edgeseg.runtime.segmenter import Segmenter

    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as loaded:
        yield loaded


def test_a_stop_at_any_point_of_the_start_ends_the_node(segmenter, tmp_path, free_port):
    before = _node_threads()
    failures, point = [], 0
    while True:
        node = DicomNode(segmenter, port=free_port(), out=tmp_path / "out", idle=60)
        interrupt = _InterruptAfterBind(point)
        sys.setprofile(interrupt)
        try:
            node.start()
        except KeyboardInterrupt:
            pass
        except Exception as exc:  # noqa: BLE001 - what the start raised instead is a failure too
            failures.append(f"point {point}: the start raised {type(exc).__name__}: {exc}")
        finally:
            sys.setprofile(None)
        raised = []

        def stop(node=node, raised=raised):  # in a thread (it could hang): what it raises is a failure here
            try:
                node.stop()
            except BaseException as exc:  # noqa: BLE001 - reported below, not lost as a thread's warning
                raised.append(f"{type(exc).__name__}: {exc}")

        stopping = threading.Thread(target=stop, daemon=True)
        stopping.start()
        stopping.join(STOP_BOUND)
        if stopping.is_alive():
            failures.append(f"point {point}: the stop hung")
        elif raised:
            failures.append(f"point {point}: the stop raised {raised[0]}")
        elif node.work.exists():
            failures.append(f"point {point}: the stop left the work folder {node.work}")
        else:
            left = sorted(thread.name for thread in _node_threads() - before if not _ended(thread))
            if left:
                failures.append(f"point {point}: {left} still run after the stop")
            before = _node_threads()  # what one point left is not counted against the next
        if not _bindable(node.port):
            failures.append(f"point {point}: the port is still bound after the stop")
        assert interrupt.bound, "the start bound no socket"
        if not interrupt.fired:  # the start ended before the n-th point: every point was tried
            break
        point += 1
    assert not failures, "\n".join(failures)
    assert point > 10  # the start's threads alone make more
