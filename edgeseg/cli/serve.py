"""``edgeseg serve``: the bundle behind a KServe v2 / Open Inference Protocol HTTP server (and gRPC service)."""

from __future__ import annotations

import contextlib
import sys

import click

from edgeseg.cli.finite_range import FiniteFloatRange
from edgeseg.cli.input_limits import input_limit_options
from edgeseg.cli.tta_option import tta_option


@click.command("serve")
@input_limit_options
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless told otherwise).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port to listen on.")
@click.option("--grpc-port", default=None, type=click.IntRange(1, 65535),
              help="Also serve the KServe v2 gRPC service (tritonclient.grpc, perf_analyzer -i grpc) on this port "
                   "of --host. Off by default; needs edgeseg[grpc].")
@click.option("--backend", default="auto", show_default=True, help="Runtime backend, as for edgeseg predict.")
@click.option("--threads", default=0, show_default=True, help="CPU threads for the backend (0: its default).")
@click.option("--model-name", default="edgeseg", show_default=True, help="Model name in /v2/models/{name}.")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="Most slices in one model call (dynamic batching of concurrent requests).")
@click.option("--queue-size", default=64, show_default=True, type=click.IntRange(1, 100000),
              help="Most requests waiting; more are answered 503.")
@click.option("--max-body-mb", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="Largest request body; larger ones are answered 413.")
@click.option("--max-side", default=4096, show_default=True, type=click.IntRange(2, 65535),
              help="Largest slice side the pipeline model takes, in pixels.")
@click.option("--timeout", default=30.0, show_default=True, type=FiniteFloatRange(0.1, 3600),
              help="Seconds a request may wait for its result (then 504) or between its body's bytes (then 408), "
                   "and a connection for a request's whole headers (then it is closed); with --grpc-port, also "
                   "a gRPC connection's preface and idle time (docs/serving.md).")
@click.option("--max-inflight-bytes", type=click.IntRange(min=1), default=None,
              help="Most bytes of decoded volumes and tensors held for requests in flight, counted as "
                   "--max-volume-bytes counts a volume; a request beyond it is answered 503 before its volume "
                   "is allocated. Default: twice --max-volume-bytes (4 GiB by default); at least that limit.")
@click.option("--max-upload-disk-bytes", type=click.IntRange(min=1), default=None,
              help="Most bytes of /v1/segment upload bodies (and their masks) held on disk at once; an upload "
                   "beyond it is answered 503 before its bytes are written. Default: --max-inflight-bytes (4 GiB by default), or twice "
                   "--max-body-mb if more; at least twice --max-body-mb.")
@click.option("--upload-dir", type=click.Path(file_okay=False), default=None,
              help="Folder /v1/segment writes upload bodies in as they arrive. Default: the temporary folder (TMPDIR).")
@click.option("--audit-log", type=click.Path(dir_okay=False, readable=False), default=None,
              help="Append one JSON line per request to this file: time, peer, request id, route, status, the bundle (manifest and "
                   "artifact sha256), backend, outcome, latency; no patient names (docs/provenance.md). Off by default.")
@tta_option
def command(bundle, host, port, grpc_port, backend, threads, model_name, max_batch, queue_size, max_body_mb, max_side,
            timeout, max_inflight_bytes, max_upload_disk_bytes, upload_dir, tta, audit_log) -> None:
    """Serve BUNDLE over HTTP: /v2 (KServe v2, tritonclient-compatible) with models NAME (the
    network, pre-processed tensor in, logits out) and NAME-pipeline (HU in, labels out),
    /v1/segment, /metrics; with --grpc-port, the same models over KServe v2 gRPC too."""
    import signal

    from edgeseg.cli.ports import check_port
    from edgeseg.errors import DataError, require
    from edgeseg.limits import current_limits
    from edgeseg.runtime.runners.remote import host_port
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.runtime.provenance import provenance
    from edgeseg.serve.app import ServeConfig, close_app, create_app
    from edgeseg.serve.audit import AuditLog
    from edgeseg.serve.header_deadline import header_deadline_protocol
    from edgeseg.serve.upload_disk import check_upload_folder

    from edgeseg.export.triton import check_model_name

    check_model_name(model_name)  # it names URL paths, as in a Triton repository
    uvicorn = require("uvicorn", "serve", "edgeseg serve")
    volume_limit = current_limits().max_volume_bytes
    if max_inflight_bytes is not None and max_inflight_bytes < volume_limit:
        raise DataError(f"--max-inflight-bytes {max_inflight_bytes} is below --max-volume-bytes {volume_limit}: "
                        "an upload of a volume within that limit could never be served")
    if max_upload_disk_bytes is not None and max_upload_disk_bytes < 2 * (max_body_mb << 20):
        raise DataError(f"--max-upload-disk-bytes {max_upload_disk_bytes} is below twice --max-body-mb "
                        f"({2 * (max_body_mb << 20)} bytes): an upload within that limit, sent compressed, "
                        "could never be saved")
    upload_dir = check_upload_folder(upload_dir)
    check_port(host, port)
    if grpc_port is not None:
        if grpc_port == port:
            raise DataError(f"--grpc-port {grpc_port} is the HTTP --port; give each its own")
        require("grpc", "grpc", "edgeseg serve --grpc-port")  # a missing extra, before the model loads
        check_port(host, grpc_port)
    audit = AuditLog(audit_log) if audit_log else None  # a path it cannot append to, before the model loads
    segmenter = Segmenter.load(bundle, backend=backend, threads=threads,
                               tta=tta)
    if audit is not None:
        audit.model = provenance(segmenter)
    config = ServeConfig(model_name=model_name, max_batch=max_batch, queue_size=queue_size,
                         max_body_bytes=max_body_mb << 20, timeout_s=timeout, max_side=max_side,
                         max_inflight_bytes=max_inflight_bytes, max_upload_disk_bytes=max_upload_disk_bytes,
                         upload_dir=str(upload_dir),
                         grpc_address=None if grpc_port is None else host_port(host, grpc_port))
    app = create_app(segmenter, config, audit)
    # on stderr where the audit log takes stdout: a log shipper reads nothing there but JSON lines
    grpc_note = "" if grpc_port is None else f" and grpc://{host_port(host, grpc_port)}"
    click.echo(f"serving {bundle} as {model_name!r} and {model_name + '-pipeline'!r} on http://{host_port(host, port)}{grpc_note} "
               f"(backend {segmenter.backend})",
               err=audit is not None and audit.shares_stdout())
    # SIGTERM (a service manager's stop) is the server's normal end, as for `edgeseg listen`:
    # uvicorn takes it for a graceful shutdown, then raises it again once it has restored this
    # handler, which lets the command end with exit status 0. Installed only now: a SIGTERM while
    # the model loads stops the command as any other (143).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        # a stop lets requests in flight finish (each has --timeout), then closes what is left: a
        # client that stalls mid-body or holds a connection must not keep the server up
        server = _server(uvicorn, app, host=host, port=port, log_level="warning", access_log=False,
                         timeout_graceful_shutdown=timeout + 5, http=header_deadline_protocol(timeout))
        with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C is a stop
            server.run()
        if not server.started:  # as uvicorn.run: the app failed to start (its lifespan said why)
            sys.exit(3)
    finally:
        signal.signal(signal.SIGTERM, previous)
        close_app(app)  # done already by the app's shutdown, unless uvicorn failed before it
        segmenter.close()
        if audit is not None:
            audit.close()


def _server(uvicorn, app, **options):
    """A uvicorn server for ``app`` that begins stopping its gRPC service as its shutdown begins:
    gRPC refuses new calls while the HTTP requests in flight drain."""
    from edgeseg.serve.app import stop_grpc

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            stop_grpc(app)
            await super().shutdown(sockets)

    return Server(uvicorn.Config(app, **options))
