"""What the DICOM node logs of its peers' associations and connections: those rejected, aborted for
what they sent, closed for keeping it waiting, and CT images proposed in a transfer syntax not
decoded here. A mixin of :class:`edgeseg.serve.dicom_node.DicomNode` (``stats``, ``audit``,
``peer_timeout``)."""

from __future__ import annotations

import logging

from edgeseg.serve.dicom_intake import CT_CLASSES

log = logging.getLogger("edgeseg.listen")


class NodeEvents:
    """The node's handlers that log (and count) what its peers did."""

    def _on_peer_refused(self, address, reason: str) -> None:
        self.stats.aborted_associations += 1
        log.warning("aborted the association from %s:%s: it sent %s", address[0], address[1], reason)

    def _on_peer_timed_out(self, address, what: str) -> None:
        self.stats.timed_out_connections += 1
        log.warning("closed the connection from %s:%s: it %s for %g s (--peer-timeout)", address[0], address[1], what,
                    self.peer_timeout)

    def _on_rejected(self, event) -> None:
        self.stats.rejected_associations += 1
        requestor = event.assoc.requestor
        # the title the peer called is in its request; the acceptor's own title is always this node's
        called = getattr(requestor.primitive, "called_ae_title", None) or "?"
        log.warning("rejected an association from %s (%s:%s) calling %r", requestor.ae_title, requestor.address,
                    requestor.port, called)
        if self.audit is not None:
            self.audit.ended(event, "rejected")

    def _on_accepted(self, event) -> None:
        """Log a peer that proposed CT images in a transfer syntax not decoded here: the peer sees
        only a failure to send the images it holds that way; the node's log must say why."""
        assoc = event.assoc
        proposed = {getattr(ts, "name", str(ts)) for cx in assoc.rejected_contexts
                    if cx.abstract_syntax in CT_CLASSES for ts in cx.transfer_syntax}
        if proposed:
            requestor = assoc.requestor
            log.warning("%s (%s:%s) proposed CT images in transfer syntaxes not decoded here (%s): images it holds "
                        "that way cannot be received; have it send them uncompressed", requestor.ae_title,
                        requestor.address, requestor.port, ", ".join(sorted(proposed)))
