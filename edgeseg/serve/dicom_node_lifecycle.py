"""The DICOM node's start and stop: pynetdicom's server bound and accepting in a thread, the peer
watch and the segmenting worker started; at the stop, every connection cut, the series received
segmented and the work folder let go. A mixin of :class:`edgeseg.serve.dicom_node.DicomNode`,
which holds the settings, the handlers and the worker (``_watch``) it starts.

Ctrl-C or SIGTERM raises KeyboardInterrupt in the main thread wherever it runs, the start
included, and the stop follows. socketserver's ``shutdown()`` waits for the accept loop to say it
has ended, so an interrupt after the bind and before that loop's thread got under way left the
stop waiting for good. The accept loop and the worker therefore run in GuardedThread objects:
the stop keeps one that has not begun from beginning, and waits only for one that has.
"""

from __future__ import annotations

import shutil
import socketserver
import threading

from edgeseg.errors import DataError, require
from edgeseg.limits import current_limits
from edgeseg.serve.dicom_connections import limited_server_class
from edgeseg.serve.dicom_identity import identify
from edgeseg.serve.dicom_intake import DEFLATED, ENHANCED_CT_CLASSES, add_ct_contexts, answered_on_failure
from edgeseg.serve.dicom_peer_bound import (MAX_PDU_LENGTH, PeerBounds, bounded_request_handler, data_set_limit,
                                            multi_frame_data_set_limit)
from edgeseg.serve.dicom_received import (check_receive_path, prepare_received_folder, removed_on_failure,
                                          start_receiving_to_files, stop_receiving_to_files)
from edgeseg.serve.dicom_refusal import REFUSAL_WAIT


class GuardedThread:
    """A daemon thread running ``target`` unless :meth:`cancel` came first. An interrupt may end
    ``start()`` before or after the thread was made to run, and the caller cannot tell which;
    :meth:`cancel` settles it: True if ``target`` runs (or ran), False if it never will."""

    def __init__(self, target, name: str) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._state = "new"  # then "running" or "cancelled", whichever comes first
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        with self._lock:
            if self._state == "cancelled":
                return
            self._state = "running"
        self._target()

    def cancel(self) -> bool:
        with self._lock:
            if self._state == "new":
                self._state = "cancelled"
            return self._state == "running"

    def join(self) -> None:
        """Wait for ``target`` to end; only where :meth:`cancel` said it runs, or once ``start()``
        has returned."""
        self._thread.join()


class NodeLifecycle:
    """``start()`` listens in the background, ``stop()`` shuts the node down."""

    def start(self) -> None:
        """Bind the port and start accepting associations and segmenting complete series."""
        pynetdicom = require("pynetdicom", "dicom", "edgeseg listen")
        check_receive_path()  # before anything else of pynetdicom's is used
        ae = pynetdicom.AE(ae_title=self.ae_title)
        identify(ae)  # edgeseg's Implementation Class UID and Version Name, not pynetdicom's
        # Every storage class is negotiated so that a non-CT image gets a C-STORE failure status
        # (a clear answer per image) instead of a rejected presentation context: all of them, not
        # StoragePresentationContexts (120 of them, those a requestor can propose at once), which
        # left out Parametric Map, Extensible SR and some 50 more, their contexts then rejected.
        ae.supported_contexts = pynetdicom.AllStoragePresentationContexts
        # none of them deflated: their images are never read, and a deflated data set is inflated
        # whole when it is (a peer naming another class in its command would have it read)
        for context in pynetdicom.AllStoragePresentationContexts:
            ae.remove_supported_context(context.abstract_syntax, DEFLATED)
        # CT images also in the compressed transfer syntaxes the DICOM reader decodes here (RLE
        # always; JPEG, JPEG-LS, JPEG 2000 with their plugins): a peer holding its images
        # compressed and unable to decompress them could otherwise not send them at all.
        add_ct_contexts(ae)  # CT Image Storage and the Enhanced CT classes
        ae.add_supported_context(pynetdicom.sop_class.Verification)
        ae.require_called_aet = not self.any_ae
        ae.require_calling_aet = list(self.calling_aets)
        ae.maximum_pdu_size = MAX_PDU_LENGTH  # what the peer's PDUs are held to (dicom_peer_bound.py)
        ae.maximum_associations = self.max_associations
        # how long an association thread waits for the request of a connection the watch may have
        # cut before it; an idle association is the watch's, which leaves out the node's own time
        ae.acse_timeout, ae.network_timeout = self.peer_timeout, None
        store = answered_on_failure(removed_on_failure(self._on_store))  # 0xC211 with an Error Comment
        store = store if self.audit is None else self.audit.counted(store)
        handlers = [(pynetdicom.evt.EVT_C_STORE, self._peers.busy_while(store)),
                    (pynetdicom.evt.EVT_C_ECHO, lambda event: 0x0000),
                    (pynetdicom.evt.EVT_REJECTED, self._on_rejected), (pynetdicom.evt.EVT_ACCEPTED, self._on_accepted),
                    (pynetdicom.evt.EVT_CONN_OPEN, self._peers.opened), (pynetdicom.evt.EVT_CONN_CLOSE, self._peers.closed)]
        if self.audit is not None:
            handlers += [(pynetdicom.evt.EVT_RELEASED, lambda event: self.audit.ended(event, "released")),
                         (pynetdicom.evt.EVT_ABORTED, lambda event: self.audit.ended(event, "aborted"))]
        # Enhanced CT data sets are received into the node's own folder, emptied here of those a
        # node killed outright left, each removed as its connection closes unless a handler took it
        received = prepare_received_folder(self.work)
        request_handler = bounded_request_handler(self._peer_bounds, self._on_peer_refused, self._peers.add,
                                                  self._connections.release, self._connections.admit_request,
                                                  received)
        server_class = limited_server_class(self._connections, min(self.peer_timeout, REFUSAL_WAIT), self._binding)
        # each C-STORE's data set written to a file as it arrives, not gathered in memory; for
        # pynetdicom a process-wide setting, held while a node runs (dicom_received.py)
        start_receiving_to_files()
        self._receiving = True
        try:
            self._server = ae.make_server((self.host, self.port), evt_handlers=handlers, request_handler=request_handler,
                                          server_class=server_class)
        except OSError as exc:
            self._server = None  # closed as the bind failed
            self._receiving = False
            stop_receiving_to_files()
            raise DataError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        self._peers.start()
        self._worker.start()
        # last, once the worker is under way: a stop that finds the accept loop begun (images may
        # have been acknowledged) waits for the worker, which segments them
        self._accept = GuardedThread(self._server.serve_forever, "edgeseg-listen-accept")
        self._accept.start()

    def _binding(self, server) -> None:
        """The server, just before it binds the port: from here on the stop closes it."""
        self._server = server

    @staticmethod
    def _peer_bounds() -> PeerBounds:
        """Asked at each association: the size limits may have been changed since the start."""
        limits = current_limits()
        return PeerBounds(data_set_limit=data_set_limit(limits), multi_frame_classes=frozenset(ENHANCED_CT_CLASSES),
                          multi_frame_limit=multi_frame_data_set_limit(limits))

    def abandon(self) -> None:
        """Segment no more series during a stop (a second interrupt): those left are logged as not
        segmented, and their images go with the work folder."""
        self._abandon.set()

    def stop(self) -> None:
        """Stop listening (open associations are aborted: an idle peer must not hold up the stop,
        and an image it was sending was not acknowledged); segment the series received and not
        yet segmented; remove the work folder if the node made it."""
        # From here on an image is refused, not stored: one stored before is in a series the stop
        # segments below; one stored after, by an association not yet cut (one whose connection
        # was accepted as the accept loop ended), would have been acknowledged and then dropped.
        # Set without the node's lock, which a handler holds through its write and flushes (a
        # slow disk must not keep the port open); the handler reads it under the lock, and the
        # worker's last taking of the series, after ``_stop``, takes the lock: an image whose
        # handler saw it unset is stored before that and segmented with its series.
        self._closing.set()
        # whatever point of the start an interrupt ended: an accept loop not begun never begins
        accepting = self._accept is not None and self._accept.cancel()
        server = self._server
        if server is not None and accepting:
            socketserver.BaseServer.shutdown(server)  # no new association from here on
        # first the connections: an abort waits for the association's reader, which a peer
        # halfway through a PDU holds in recv() until its connection ends
        self._peers.close()
        if server is not None:
            for assoc in list(getattr(server, "active_associations", [])):
                if self._peers.requested(assoc):  # one without its request yet ends with its connection
                    assoc.abort()
            server.server_close()  # closes the socket (and joins the threads that handed connections over)
            self._connections.flush(force=True)
        self._stop.set()
        if accepting or self._worker.cancel():  # began, or started before the accept loop
            self._worker.join()
        if self._receiving:  # no association is left to receive a data set
            self._receiving = False
            stop_receiving_to_files()
            # empty: each file went with its connection; a stopped node's work folder holds its series alone
            shutil.rmtree(self.work / "received", ignore_errors=True)
        if self._own_work:
            self._remove_work()
        if self._claim is not None:
            with self._lock:
                self._refused.close()
            self._claim.release()

    def _remove_work(self) -> None:
        """Remove the work folder the node made, but for the SEGs kept nowhere else (the unsent
        folder could not be written; the stop's log names them), which stay in it."""
        stranded = {seg for seg, own in (() if self._forwarder is None else self._forwarder.stranded) if own}
        if not stranded:
            shutil.rmtree(self.work, ignore_errors=True)
            return
        for entry in self.work.iterdir():
            if entry in stranded:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
