"""Bounds on what one DICOM peer can make the node read and hold, enforced on its TCP stream.

pynetdicom reads each PDU whole at whatever length its 6-byte header claims (up to 4 GiB, past
the maximum PDU length the node offered; the A-ASSOCIATE-RQ too, before any AE title is
checked), and gathers a DIMSE message's fragments in memory until the last one has come, before
any handler of the node runs. The node therefore hands pynetdicom its peer's socket wrapped in
:class:`PduBoundSocket`, which takes the stream one PDU at a time (PS3.8 9.3: type, reserved,
32-bit length, then the body) and refuses, before reading its body, a PDU longer than the node
accepts, and, before handing it on, a P-DATA-TF PDU that takes one message's command or data set
past its bound (PS3.8 9.3.5: each presentation data value item says whether it carries command
or data set and whether it is the last fragment). A refused peer gets an A-ABORT and pynetdicom
sees its connection end; nothing of the refused PDU is held. The wrapper also keeps the time since
the peer last started or finished a PDU or the node last sent it something, so that a peer keeping
the node waiting can be cut off from outside the thread that waits on it (dicom_peer_watch.py).

The wrapper goes in through interfaces pynetdicom documents: ``AE.make_server(request_handler=)``
and socketserver's ``setup()`` of the request handler, whose ``request`` is the socket the
association reads; it relies on nothing inside pynetdicom's reader.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgeseg.limits import HU_ITEMSIZE, InputLimits
from edgeseg.serve.dicom_received import ReceivedFiles, next_to_file

# What the node offers as its maximum PDU length (the variable field of a P-DATA-TF PDU): the
# customary default of pynetdicom and dcmtk, which every peer honours.
MAX_PDU_LENGTH = 16382
# Any other PDU the node takes (A-ASSOCIATE-RQ, A-RELEASE, A-ABORT): an association request
# proposes at most 128 presentation contexts (odd IDs 1..255); even 30 transfer syntaxes of
# 64-character UIDs each, and user identity fields, come to well under this.
OTHER_PDU_LIMIT = 1 << 20
# A C-STORE or C-ECHO command set is a few hundred bytes.
COMMAND_SET_LIMIT = 64 << 10
# The elements of one image other than its pixel data: a CT header with private groups is tens
# of kilobytes; this leaves ample room and bounds a padded one.
NON_PIXEL_LIMIT = 4 << 20
# Bytes per pixel counted for the data set bound: CT is 2, and no grey-level image the reader
# takes needs more than 8 (compressed pixel data needs fewer than uncompressed).
PIXEL_BYTES_BOUND = 8
P_DATA_TF = 0x04
PDU_NAMES = {0x01: "an A-ASSOCIATE-RQ", 0x02: "an A-ASSOCIATE-AC", 0x03: "an A-ASSOCIATE-RJ", P_DATA_TF: "a P-DATA-TF PDU",
             0x05: "an A-RELEASE-RQ", 0x06: "an A-RELEASE-RP", 0x07: "an A-ABORT"}
_COMMAND, _LAST = 0x01, 0x02
# What answers an association request in pynetdicom's place: the PDU, and what is called with
# whether it was sent (the outcome the audit log records comes after the send)
Refusal = tuple[bytes, Callable[[bool], None]]


def abort_pdu(source: int, code: int = 0) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8): type 7, length 4, two reserved bytes, source, reason."""
    return bytes([0x07, 0, 0, 0, 0, 4, 0, 0, source, code])


def data_set_limit(limits: InputLimits) -> int:
    """The most bytes one message's data set may take on the wire: one image at the pixel
    limit (or all of the volume limit, if that is fewer pixels) at 8 bytes a pixel, plus the
    non-pixel allowance."""
    pixels = min(limits.max_pixels, limits.max_volume_bytes // HU_ITEMSIZE)
    return pixels * PIXEL_BYTES_BOUND + NON_PIXEL_LIMIT


def multi_frame_data_set_limit(limits: InputLimits) -> int:
    """The most bytes one multi-frame CT's data set (a whole series in one message) may take on
    the wire: a volume at the volume limit, its pixels counted at the 4 bytes a pixel of the
    float32 HU array the limit counts (CT stores 2), plus the non-pixel allowance."""
    return limits.max_volume_bytes + NON_PIXEL_LIMIT


@dataclass(frozen=True)
class PeerBounds:
    """How much one association may send: per P-DATA-TF PDU (its variable field, as the node
    offered), per other PDU, and per message (command set, data set; sums of fragments). A data
    set sent on a presentation context the peer proposed for one of ``multi_frame_classes`` (a
    whole series in one image), whose command set names one of them as its Affected SOP Class, is
    bounded by ``multi_frame_limit`` instead."""

    max_pdu_length: int = MAX_PDU_LENGTH
    other_pdu_limit: int = OTHER_PDU_LIMIT
    command_set_limit: int = COMMAND_SET_LIMIT
    data_set_limit: int = NON_PIXEL_LIMIT
    multi_frame_classes: frozenset = frozenset()
    multi_frame_limit: int = NON_PIXEL_LIMIT


class PduBoundSocket:
    """A connected socket read one whole PDU at a time, refusing what is past ``bounds``.

    ``recv`` hands out the bytes of the current PDU; it reads the next one only once those are
    taken (pynetdicom reads exactly a header, then exactly its body). A refused PDU ends the
    stream: ``refused(reason)`` is called once, the peer is sent an A-ABORT, and ``recv``
    returns ``b""`` from then on, as for a closed connection. ``waiting(now)`` says for how long
    and on what the node has waited on the peer, ``cut()`` ends the connection from another
    thread, ``busy()`` holds the clock while the node works for the peer. Everything else is the
    socket's.
    """

    def __init__(self, sock, bounds: PeerBounds, refused: Callable[[str], None], address=("?", 0),
                 closed: Callable[[], None] = lambda: None,
                 requested: Callable[[bytes], Refusal | None] = lambda pdu: None,
                 received: ReceivedFiles | None = None) -> None:
        self._sock = sock
        self._received = received  # the files its Enhanced CT data sets are written to
        self._on_close = closed
        # given the peer's A-ASSOCIATE-RQ PDU, whole: None to hand it on, or the PDU to answer it
        # with instead (an A-ASSOCIATE-RJ) and what to call with whether it was sent, the
        # connection then ending
        self._on_request = requested
        self._bounds = bounds
        self._refused = refused
        self.address = tuple(address[:2])
        self._pending = memoryview(b"")
        self._closed = False
        self._command = 0  # bytes of the current message's command set so far
        self._data_set = 0  # and of its data set
        self._command_bytes = bytearray()  # the current command set (within command_set_limit)
        self._sent_multi_frame = False  # whether the last command set named a multi-frame class
        self._multi_frame: set[int] = set()  # presentation context IDs proposed for multi-frame classes
        # the peer's clock: the time since the node last heard a whole PDU, the start of one, or
        # sent an answer, and what it waits for (a PDU header or body begun: bytes due, bytes come)
        self._since = time.monotonic()
        self._pdus = 0
        self._reading: tuple[str, int] | None = None
        self._got = 0
        self._busy = 0
        self._send_lock = threading.Lock()
        self._sending = False

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def send(self, data, flags: int = 0) -> int:
        return self._sending_to_peer(self._sock.send, data, flags)

    def sendall(self, data, flags: int = 0) -> None:
        self._sending_to_peer(self._sock.sendall, data, flags)

    def _sending_to_peer(self, send, data, flags: int):
        with self._send_lock:
            self._sending = True
            self._since = time.monotonic()  # a peer not taking the answer keeps the node waiting from here
            try:
                return send(data, flags)
            finally:
                self._sending = False
                self._since = time.monotonic()

    @property
    def raw_socket(self):
        return self._sock

    @property
    def requested(self) -> bool:
        """Whether the peer has sent a whole PDU (its association request comes first)."""
        return self._pdus > 0

    def close(self) -> None:
        # the connection leaves the node's count as its socket closes, whoever closes it
        on_close, self._on_close = self._on_close, None
        try:
            self._sock.close()
        finally:
            # every way an association ends closes its socket (pynetdicom's reading thread, or its
            # association thread once that reading thread has died): no file outlives it
            if self._received is not None:
                self._received.discard()
            if on_close is not None:
                on_close()

    def shutdown(self, how: int) -> None:
        # a connection cut here is shut down already: pynetdicom closes the socket only where its
        # shutdown raised nothing, and would leave the file descriptor to the garbage collector
        with contextlib.suppress(OSError):
            self._sock.shutdown(how)

    def busy(self) -> None:
        """The node works for the peer (its C-STORE handler): the peer is not waited on until
        :meth:`done`."""
        self._busy += 1

    def done(self) -> None:
        self._since = time.monotonic()
        self._busy -= 1

    def waiting(self, now: float) -> tuple[float, str] | None:
        """How long the node has waited on the peer and for what; None while it works for it."""
        if self._busy or self._closed:
            return None
        waited = now - self._since
        if self._sending:
            return waited, "did not take the node's answer"
        if self._reading is not None:
            what, length = self._reading
            return waited, f"sent {self._got} of the {length} bytes of {what} and then nothing"
        return waited, "sent nothing after its last PDU" if self._pdus else "opened a connection and sent nothing"

    def cut(self) -> None:
        """End the connection from another thread: the thread reading it sees it end. An A-ABORT
        goes first unless an answer is being sent (its bytes would land inside that answer)."""
        self._closed = True
        if self._send_lock.acquire(blocking=False):
            try:
                with contextlib.suppress(OSError):  # the peer takes nothing more: the shutdown below says it all
                    self._sock.send(abort_pdu(source=0), socket.MSG_DONTWAIT)
            finally:
                self._send_lock.release()
        self.shutdown(socket.SHUT_RDWR)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if not self._pending and not self._closed:
            self._pending = memoryview(self._next_pdu())
        chunk, self._pending = self._pending[:bufsize], self._pending[bufsize:]
        return bytes(chunk)

    def _read(self, count: int, what: str) -> bytes:
        parts, self._got, self._reading = [], 0, (what, count)
        while self._got < count:
            part = self._sock.recv(min(count - self._got, 1 << 16))
            if not part:
                break
            parts.append(part)
            self._got += len(part)
        return b"".join(parts)

    def _next_pdu(self) -> bytes:
        # pynetdicom reads once the peer's first bytes are there: from now on each PDU has the
        # whole timeout to come in, however long the wait for it was
        self._since = time.monotonic()
        header = self._read(6, "a PDU header")
        if len(header) < 6:
            self._closed = True
            return header  # the connection ended: pynetdicom sees what it would have seen
        pdu_type, length = header[0], int.from_bytes(header[2:6], "big")
        what = PDU_NAMES.get(pdu_type, f"a PDU of type 0x{pdu_type:02X}")
        limit = self._bounds.max_pdu_length if pdu_type == P_DATA_TF else self._bounds.other_pdu_limit
        if length > limit:
            return self._refuse(f"{what} of {length} bytes, over the {limit} the node accepts", source=2, code=6)
        body = self._read(length, what)
        self._reading = None
        self._pdus += 1
        self._since = time.monotonic()
        if self._pdus == 1 and pdu_type == 0x01 and len(body) == length:
            self._multi_frame = proposed_contexts(body, self._bounds.multi_frame_classes)
            answer = self._on_request(header + body)
            if answer is not None:  # pynetdicom sees the connection end before a request
                self._closed = True
                pdu, sent = answer
                try:
                    self.sendall(pdu)
                except OSError:  # the peer reset the connection: it never had the answer
                    sent(False)
                else:
                    sent(True)
                return b""
        if len(body) == length and pdu_type == P_DATA_TF:
            over = self._count_fragments(body)
            if over is not None:
                return self._refuse(over, source=0)
        if len(body) < length:
            self._closed = True
        return header + body

    def _count_fragments(self, body: bytes) -> str | None:
        """Add the PDU's fragments to the current message; the reason to refuse when one takes
        its command set or data set past the bound. A malformed item stops the count: pynetdicom
        refuses that PDU itself."""
        offset = 0
        while offset + 6 <= len(body):
            item_length = int.from_bytes(body[offset:offset + 4], "big")
            if item_length < 2 or offset + 4 + item_length > len(body):
                break
            context, control, size = body[offset + 4], body[offset + 5], item_length - 2
            fragment = body[offset + 6:offset + 4 + item_length]
            offset += 4 + item_length
            if control & _COMMAND:
                self._command += size
                if self._command > self._bounds.command_set_limit:
                    return f"a command set of over {self._bounds.command_set_limit} bytes"
                self._command_bytes += fragment
                if control & _LAST:
                    # pynetdicom never checks a C-STORE's class against its context's: the larger
                    # bound needs both (and the node refuses a data set of another class)
                    sent = affected_class(bytes(self._command_bytes))
                    self._sent_multi_frame = sent in self._bounds.multi_frame_classes
                    # pynetdicom decodes this PDU in the thread reading it: a whole series goes to a file
                    next_to_file(self._received if self._sent_multi_frame else None)
                    self._command, self._command_bytes = 0, bytearray()
            else:
                self._data_set += size
                multi_frame = context in self._multi_frame and self._sent_multi_frame
                limit = self._bounds.multi_frame_limit if multi_frame else self._bounds.data_set_limit
                if self._data_set > limit:
                    return (f"a data set of over {limit} bytes, more than one image within the "
                            f"size limits takes (EDGESEG_MAX_PIXELS, EDGESEG_MAX_VOLUME_BYTES)")
                if control & _LAST:
                    self._data_set = 0
        return None

    def _refuse(self, reason: str, *, source: int, code: int = 0) -> bytes:
        """Abort: ``source`` 0 is the node refusing what the peer may send, 2 (with a reason
        ``code``, 6 "invalid PDU parameter value") a PDU the protocol does not allow."""
        self._closed = True
        self._refused(reason)
        with contextlib.suppress(OSError):  # the peer is gone already; the stream ends either way
            self.sendall(abort_pdu(source, code))
        return b""


def affected_class(command: bytes) -> str:
    """The Affected SOP Class UID (0000,0002) of a command set (PS3.7 6.3.1: Implicit VR Little
    Endian, elements in order), or "" where it has none or is malformed."""
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, offset)
        if (group, element) == (0, 2):
            return command[offset + 8:offset + 8 + length].rstrip(b"\0 ").decode("ascii", "replace")
        if (group, element) > (0, 2):
            return ""
        offset += 8 + length
    return ""


def proposed_contexts(body: bytes, classes: frozenset) -> set[int]:
    """The IDs of the presentation contexts an A-ASSOCIATE-RQ (its PDU ``body``, PS3.8 9.3.2:
    68 bytes of fixed fields, then items) proposes for an abstract syntax in ``classes``. A
    malformed item ends the list: pynetdicom refuses that request itself."""
    found, offset = set(), 68
    while offset + 4 <= len(body):
        item_type, length = body[offset], int.from_bytes(body[offset + 2:offset + 4], "big")
        item = body[offset + 4:offset + 4 + length]
        offset += 4 + length
        if item_type != 0x20 or len(item) < 4:
            continue
        sub = 4  # context ID, three reserved bytes, then the sub-items
        while sub + 4 <= len(item):
            sub_type, sub_length = item[sub], int.from_bytes(item[sub + 2:sub + 4], "big")
            if sub_type == 0x30 and item[sub + 4:sub + 4 + sub_length].rstrip(b"\0 ").decode("ascii", "replace") in classes:
                found.add(item[0])
            sub += 4 + sub_length
    return found


def bounded_request_handler(bounds: Callable[[], PeerBounds], refused: Callable[[tuple, str], None],
                            opened: Callable[[PduBoundSocket], None] = lambda conn: None,
                            closed: Callable[[object], None] = lambda sock: None,
                            requested: Callable[[object, tuple, bytes], Refusal | None] = lambda sock, address, pdu: None,
                            received_folder=None):
    """A pynetdicom request handler class whose associations read their peer through
    :class:`PduBoundSocket`; ``bounds()`` is asked once per association, ``refused(address,
    reason)`` called when one is aborted, ``opened(conn)`` with each new one (to watch its clock),
    ``closed(sock)`` with its accepted socket once that is closed, ``requested(sock, address,
    pdu)`` with its association request, to answer in pynetdicom's place (its PDU, and what to
    call with whether it was sent) or not (None); its multi-frame data sets are received into
    ``received_folder`` (else in memory)."""
    from pynetdicom.transport import RequestHandler

    class BoundedRequestHandler(RequestHandler):
        def setup(self) -> None:
            super().setup()
            address, sock = self.client_address, self.request
            self.request = PduBoundSocket(sock, bounds(), lambda reason: refused(address, reason), address,
                                          closed=lambda: closed(sock), requested=lambda pdu: requested(sock, address, pdu),
                                          received=None if received_folder is None else ReceivedFiles(received_folder))
            opened(self.request)

    return BoundedRequestHandler
