"""``edgeseg listen``: a DICOM node that segments each CT series it receives."""

from __future__ import annotations

import click


@click.command("listen")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--ae-title", default="EDGESEG", show_default=True, help="This node's AE title.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 for the network).")
@click.option("--port", default=11112, show_default=True, type=click.IntRange(1, 65535))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for the DICOM SEG files.")
@click.option("--forward", default=None, metavar="HOST:PORT:AET", help="Send each SEG by C-STORE to this peer.")
@click.option("--idle", default=5.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds without a new image after which a series counts as complete.")
@click.option("--backend", default="auto", show_default=True, help="Runtime backend, as for edgeseg predict.")
@click.option("--threads", default=0, show_default=True, help="CPU threads for the backend (0: its default).")
def command(bundle, ae_title, host, port, out, forward, idle, backend, threads) -> None:
    """Accept CT images by C-STORE, segment each complete series, write/forward its DICOM SEG."""
    import contextlib
    import time

    from edgeseg.atomic import check_output_folder
    from edgeseg.cli.logs import configure_logging
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.dicom_node import DicomNode, Peer

    if out is not None:
        check_output_folder(out, "--out")
    configure_logging()
    peer = Peer.parse(forward) if forward else None
    segmenter = Segmenter.load(bundle, backend=backend.split(",") if "," in backend else backend, threads=threads)
    node = DicomNode(segmenter, ae_title=ae_title, host=host, port=port, out=out, forward=peer, idle=idle)
    node.start()
    click.echo(f"DICOM node {ae_title} on {host}:{port} (backend {segmenter.backend}); Ctrl-C stops it")
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a user stops the node
            while True:
                time.sleep(1)
    finally:
        node.stop()
        segmenter.close()
