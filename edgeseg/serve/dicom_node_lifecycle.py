"""The DICOM node's start and stop: pynetdicom's server bound and accepting in a thread, the peer
watch and the segmenting worker started; at the stop, every connection cut, the series received
segmented and the work folder let go. A mixin of :class:`edgeseg.serve.dicom_node.DicomNode`,
which holds the settings, the handlers and the worker (``_watch``) it starts."""

from __future__ import annotations

import shutil
import socketserver
import threading

from edgeseg.errors import DataError, require
from edgeseg.limits import current_limits
from edgeseg.serve.dicom_connections import limited_server_class
from edgeseg.serve.dicom_intake import CT_IMAGE_STORAGE, decodable_transfer_syntaxes
from edgeseg.serve.dicom_peer_bound import MAX_PDU_LENGTH, PeerBounds, bounded_request_handler, data_set_limit
from edgeseg.serve.dicom_refusal import REFUSAL_WAIT


class NodeLifecycle:
    """``start()`` listens in the background, ``stop()`` shuts the node down."""

    def start(self) -> None:
        """Bind the port and start accepting associations and segmenting complete series."""
        pynetdicom = require("pynetdicom", "dicom", "edgeseg listen")
        ae = pynetdicom.AE(ae_title=self.ae_title)
        # Every storage class is negotiated so that a non-CT image gets a C-STORE failure status
        # (a clear answer per image) instead of a rejected presentation context.
        ae.supported_contexts = pynetdicom.StoragePresentationContexts
        # CT images also in the compressed transfer syntaxes the DICOM reader decodes here (RLE
        # always; JPEG, JPEG-LS, JPEG 2000 with their plugins): a peer holding its images
        # compressed and unable to decompress them could otherwise not send them at all.
        ae.add_supported_context(CT_IMAGE_STORAGE, decodable_transfer_syntaxes())
        ae.add_supported_context(pynetdicom.sop_class.Verification)
        ae.require_called_aet = not self.any_ae
        ae.require_calling_aet = list(self.calling_aets)
        ae.maximum_pdu_size = MAX_PDU_LENGTH  # what the peer's PDUs are held to (dicom_peer_bound.py)
        ae.maximum_associations = self.max_associations
        # how long an association thread waits for the request of a connection the watch may have
        # cut before it; an idle association is the watch's, which leaves out the node's own time
        ae.acse_timeout, ae.network_timeout = self.peer_timeout, None
        store = self._on_store if self.audit is None else self.audit.counted(self._on_store)
        handlers = [(pynetdicom.evt.EVT_C_STORE, self._peers.busy_while(store)),
                    (pynetdicom.evt.EVT_C_ECHO, lambda event: 0x0000),
                    (pynetdicom.evt.EVT_REJECTED, self._on_rejected), (pynetdicom.evt.EVT_ACCEPTED, self._on_accepted),
                    (pynetdicom.evt.EVT_CONN_OPEN, self._peers.opened), (pynetdicom.evt.EVT_CONN_CLOSE, self._peers.closed)]
        if self.audit is not None:
            handlers += [(pynetdicom.evt.EVT_RELEASED, lambda event: self.audit.ended(event, "released")),
                         (pynetdicom.evt.EVT_ABORTED, lambda event: self.audit.ended(event, "aborted"))]
        request_handler = bounded_request_handler(self._peer_bounds, self._on_peer_refused, self._peers.add,
                                                  self._connections.release, self._connections.admit_request)
        try:
            self._server = ae.make_server((self.host, self.port), evt_handlers=handlers, request_handler=request_handler,
                                          server_class=limited_server_class(self._connections,
                                                                            min(self.peer_timeout, REFUSAL_WAIT)))
        except OSError as exc:
            raise DataError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        threading.Thread(target=self._server.serve_forever, name="edgeseg-listen-accept", daemon=True).start()
        self._peers.start()
        self._worker.start()

    @staticmethod
    def _peer_bounds() -> PeerBounds:
        """Asked at each association: the size limits may have been changed since the start."""
        return PeerBounds(data_set_limit=data_set_limit(current_limits()))

    def abandon(self) -> None:
        """Segment no more series during a stop (a second interrupt): those left are logged as not
        segmented, and their images go with the work folder."""
        self._abandon.set()

    def stop(self) -> None:
        """Stop listening (open associations are aborted: an idle peer must not hold up the stop,
        and an image it was sending was not acknowledged); segment the series received and not
        yet segmented; remove the work folder if the node made it."""
        if self._server is not None:
            socketserver.BaseServer.shutdown(self._server)  # no new association from here on
            # first the connections: an abort waits for the association's reader, which a peer
            # halfway through a PDU holds in recv() until its connection ends
            self._peers.close()
            for assoc in list(getattr(self._server, "active_associations", [])):
                if self._peers.requested(assoc):  # one without its request yet ends with its connection
                    assoc.abort()
            self._server.server_close()  # closes the socket and waits for the association threads
            self._connections.flush(force=True)
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join()
        if self._own_work:
            shutil.rmtree(self.work, ignore_errors=True)
        if self._claim is not None:
            self._claim.release()
