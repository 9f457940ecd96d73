"""A connection the node accepted as it stopped listening, and set up only once the stop had cut
the connections it watched: PeerWatch.add cuts it as it is set up (no one else would end it).

Made to happen every time, not by chance: the node's handler, setting up the connection, asks
the node for its peer's bounds (``_peer_bounds``); here that waits until the stop's
PeerWatch.close has returned. Before, such a connection was cut but never paired with its
association: the stop took the association for one whose request had come, and aborted it while
it still waited for that request (pynetdicom's reader thread ends such an abort in a traceback),
and the end of the connection did not end that wait.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading

import pytest

from tests.serve.test_dicom_node import _wait_for

pynetdicom = pytest.importorskip("pynetdicom")


def test_a_connection_set_up_after_the_stop_cut_the_others_is_cut_and_never_aborted(serve_bundle, tmp_path,
                                                                                   free_port, caplog):
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.dicom_node import DicomNode

    setting_up, close_returned = threading.Event(), threading.Event()
    seen, errors = {}, []

    class HeldSetUp(DicomNode):
        def _peer_bounds(self):  # the handler's setup, before it hands the connection to PeerWatch.add
            setting_up.set()
            assert close_returned.wait(60)
            return super()._peer_bounds()

    def after_close(frame, event, arg):  # in the stop: its PeerWatch.close has returned
        if event == "return" and frame.f_code.co_name == "close" and "dicom_peer_watch" in frame.f_code.co_filename:
            sys.setprofile(None)
            node._server.bind(pynetdicom.evt.EVT_CONN_OPEN, lambda event: seen.setdefault("assoc", event.assoc))
            close_returned.set()
            # the held connection's association, set up now (or ended already): the stop looks at it next
            assert _wait_for(lambda: "assoc" in seen, 30)

    hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(f"{args.thread.name}: {args.exc_type.__name__}: {args.exc_value}")
    caplog.set_level(logging.ERROR)
    try:
        with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
            node = HeldSetUp(segmenter, port=free_port(), out=tmp_path / "out", idle=600, peer_timeout=120)
            node.start()  # bound and listening once it returns
            peer = socket.create_connection(("127.0.0.1", node.port), timeout=60)
            assert setting_up.wait(60)
            sys.setprofile(after_close)
            try:
                node.stop()
            finally:
                sys.setprofile(None)
                close_returned.set()
            ended = _wait_for(lambda: not seen["assoc"].is_alive(), 60)
            answer = b""
            while part := peer.recv(65536):  # the node cut it: the peer reads to the end
                answer += part
            peer.close()
    finally:
        threading.excepthook = hook
    assert answer in (b"", bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # an A-ABORT at most, then the end
    assert node._peers.requested(seen["assoc"]) is False  # so the stop did not abort it
    assert ended and errors == [], errors
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pynetdicom")] == []
