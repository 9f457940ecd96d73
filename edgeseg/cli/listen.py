"""``edgeseg listen``: a DICOM node that segments each CT series it receives."""

from __future__ import annotations

import click

from edgeseg.cli.finite_range import FiniteFloatRange
from edgeseg.cli.input_limits import input_limit_options
from edgeseg.cli.tta_option import tta_option


@click.command("listen")
@input_limit_options
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--ae-title", default="EDGESEG", show_default=True,
              help="This node's AE title; associations calling another title are rejected (see --any-ae).")
@click.option("--any-ae", is_flag=True, help="Accept associations whatever called AE title they give.")
@click.option("--allow-calling", "allow_calling", multiple=True, metavar="AET",
              help="Accept associations only from this calling AE title; repeatable (default: from any).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 for the network).")
@click.option("--port", default=11112, show_default=True, type=click.IntRange(1, 65535), help="TCP port to listen on.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for the DICOM SEG files.")
@click.option("--forward", default=None, metavar="HOST:PORT:AET", help="Send each SEG by C-STORE to this peer.")
@click.option("--idle", default=5.0, show_default=True, type=FiniteFloatRange(0.1, 3600),
              help="Seconds after a series' last image, and after the association sending it ended, before it "
                   "counts as complete; a series an open association is still sending is never complete.")
@click.option("--keep-segmented", default=600.0, show_default=True, type=FiniteFloatRange(0, 86400),
              help="Seconds the images of a segmented series are kept: images of it arriving meanwhile are segmented "
                   "with them into a SEG of the whole series that replaces the first (0: into a SEG of their own).")
@click.option("--max-series", default=16, show_default=True, type=click.IntRange(1, 10_000),
              help="Series received and not yet segmented at once; an image opening one more is refused (0xA700).")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Folder keeping the received images until they are segmented, made if missing: each image is on "
                   "disk before it is acknowledged, and series left by a node that was killed are segmented at the "
                   "next start (default: a temporary folder under TMPDIR, removed at the stop; lost if killed).")
@click.option("--unsent", type=click.Path(file_okay=False), default=None,
              help="Folder keeping each SEG the --forward peer did not take until it is sent "
                   "(default: OUT/unsent; needed with --forward and no --out).")
@click.option("--resend-every", default=60.0, show_default=True, type=FiniteFloatRange(1, 86400),
              help="Seconds between tries to send the SEGs waiting in --unsent.")
@click.option("--peer-timeout", default=30.0, show_default=True, type=FiniteFloatRange(0.1, 3600),
              help="Seconds a peer may keep the node waiting (for its association request, the rest of a PDU, its "
                   "next PDU on an open association, or to take an answer) before its connection is closed.")
@click.option("--max-associations", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="Associations at once, connections not yet associated included; a request past them is rejected "
                   "(A-ASSOCIATE-RJ: transient, local limit exceeded). Each may hold about three copies of one image "
                   "in memory.")
@click.option("--max-connections", default=32, show_default=True, type=click.IntRange(1, 10_000),
              help="Open TCP connections at once, at least --max-associations; one past them is refused as it is "
                   "accepted, before the node spends a thread on it: its association request is rejected "
                   "(transient, local limit exceeded).")
@click.option("--max-connections-per-host", default=None, type=click.IntRange(1, 10_000),
              show_default="--max-associations less max(2, a fifth of it), at least 1: 8 of 10",
              help="Open TCP connections (and so association slots) from one peer address; one past them is "
                   "refused as past --max-connections, so that one host cannot hold every slot.")
@click.option("--max-associations-per-ae", default=None, type=click.IntRange(1, 1000),
              show_default="as for --max-connections-per-host: 8 of 10",
              help="Associations at once calling as one AE title, from any address; a request past them is rejected "
                   "(transient, local limit exceeded), so that one AE title sending from several addresses cannot "
                   "hold every slot.")
@click.option("--backend", default="auto", show_default=True, help="Runtime backend, as for edgeseg predict.")
@click.option("--threads", default=0, show_default=True, help="CPU threads for the backend (0: its default).")
@click.option("--audit-log", type=click.Path(dir_okay=False, readable=False), default=None,
              help="Append one JSON line per association, per series and per connection refused for the limits (a flood "
                   "coalesced) to this file: time, peer, AE titles, study and series UIDs, the SEG, the bundle (manifest and "
                   "artifact sha256), backend, outcome, latency; no patient names (docs/provenance.md). Off by default.")
@tta_option
def command(bundle, ae_title, any_ae, allow_calling, host, port, out, forward, idle, max_series, unsent, resend_every,
            peer_timeout, max_associations, max_connections, max_connections_per_host, max_associations_per_ae, backend,
            threads, tta, audit_log, keep_segmented, work) -> None:
    """Accept CT images by C-STORE, segment each complete series, write/forward its DICOM SEG."""
    import contextlib
    import signal
    import time

    from edgeseg.atomic import check_output_folder
    from edgeseg.cli.ports import check_port
    from edgeseg.runtime.provenance import provenance
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.audit import AuditLog
    from edgeseg.serve.dicom_node import DicomNode, Peer, check_node_settings
    from edgeseg.serve.dicom_work import WorkClaim
    from edgeseg.serve.malloc_arenas import cap_malloc_arenas
    from edgeseg.serve.work_folder import check_work_folder

    cap_malloc_arenas()  # before any thread: one per association spreads memory over many arenas
    peer = Peer.parse(forward) if forward else None
    # settings and the address first: loading a bundle can take a backend probe
    check_node_settings(out=out, forward=peer, unsent=unsent, max_series=max_series, ae_title=ae_title,
                        calling_aets=list(allow_calling), peer_timeout=peer_timeout, max_associations=max_associations,
                        max_connections=max_connections, max_connections_per_host=max_connections_per_host,
                        max_associations_per_ae=max_associations_per_ae, keep_segmented=keep_segmented, work=work)
    if out is not None:
        check_output_folder(out, "--out")
    if unsent is not None:
        check_output_folder(unsent, "--unsent")
    if work is not None:  # another node's, refused before the model loads (the node claims it for good)
        WorkClaim(work, note=False).release()
    else:  # where the node keeps a series until it is segmented
        check_work_folder(None, None, "received images")
    check_port(host, port)
    audit = AuditLog(audit_log) if audit_log else None  # a path it cannot append to, before the model loads
    node = segmenter = None

    # the stop segments what was received; a second signal cuts that short (the series left are
    # logged) but never leaves the work folder behind
    def abandon(signum, frame):
        if node is not None:
            node.abandon()

    def interrupt(signum, frame):  # SIGTERM (a service manager's stop) ends the node as Ctrl-C does
        # the first one switches both to abandon before it raises: a second one, however soon,
        # cuts the stop short and never skips it
        signal.signal(signal.SIGTERM, abandon)
        signal.signal(signal.SIGINT, abandon)
        raise KeyboardInterrupt

    try:
        # Ctrl-C or SIGTERM at any moment from here, the model loading and the start included, is a
        # stop: the node (if made) segments what it has, and the exit status is 0
        with contextlib.suppress(KeyboardInterrupt):
            # SIGINT too, explicitly: a process started in the background by a shell inherits
            # SIGINT ignored, and Python then installs no Ctrl-C handler of its own. Before the
            # model loads: a signal while it loads is the same stop as any later one. Installed
            # within the block: a signal just after the first is installed is a stop, not click's
            # "Aborted!" and exit status 1.
            signal.signal(signal.SIGTERM, interrupt)
            signal.signal(signal.SIGINT, interrupt)
            segmenter = Segmenter.load(bundle, backend=backend, threads=threads, tta=tta)
            if audit is not None:
                audit.model = provenance(segmenter)
            node = DicomNode(segmenter, ae_title=ae_title, host=host, port=port, out=out, forward=peer, idle=idle,
                             any_ae=any_ae, calling_aets=list(allow_calling), max_series=max_series, unsent=unsent,
                             resend_every=resend_every, peer_timeout=peer_timeout, max_associations=max_associations,
                             max_connections=max_connections, max_connections_per_host=max_connections_per_host,
                             max_associations_per_ae=max_associations_per_ae, audit=audit,
                             keep_segmented=keep_segmented, work=work, durable=work is not None)
            node.start()
            # the one start-up line, as serve's: the node itself logs nothing when it starts
            called = "any called AE title" if any_ae else f"called AE title {ae_title} only"
            click.echo(f"DICOM node {ae_title} listening on {host}:{port} ({called}; backend {segmenter.backend}); "
                       "Ctrl-C stops it", err=audit is not None and audit.shares_stdout())  # stdout: JSON lines alone
            while True:  # until Ctrl-C or SIGTERM
                time.sleep(1)
    finally:
        signal.signal(signal.SIGTERM, abandon)  # an error, not a signal, may have ended the block
        signal.signal(signal.SIGINT, abandon)
        if node is not None:
            node.stop()  # removes the folder of received images (not a --work folder)
        if segmenter is not None:
            segmenter.close()
        if audit is not None:
            audit.close()
