"""``POST /v1/segment``: a whole file in, its mask out (the three steps are in
``edgeseg.serve.uploads``).

An upload's body is written to a temporary folder of its own as it arrives, its bytes taken from
the upload disk budget first (``edgeseg.serve.upload_disk``) and held until the folder is
removed. It then takes a place in the upload queue before it is decoded, so that at most
``--queue-size`` decoded volumes wait; the place is given back when its model call starts, or on
whatever path the upload leaves by before that (a refusal, a failed reading, a client gone while
it waited).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from concurrent.futures import Future
from pathlib import Path

from edgeseg.errors import require
from edgeseg.serve.batcher import QueueFull
from edgeseg.serve.client_gone import first_of
from edgeseg.serve.http_errors import CLIENT_CLOSED, HttpError, hold, refused, submitted
from edgeseg.serve.upload_disk import disk_full, mask_bytes, no_room
from edgeseg.serve.uploads import read_upload, write_mask

# Imported only by the server's app, so the missing-extra message is the right failure here; at
# module level because FastAPI reads the route's parameter annotations from the module's names.
fastapi = require("fastapi", "serve", "edgeseg serve")
Request = fastapi.Request
log = logging.getLogger("edgeseg.serve")


def add_segment_route(app, segmenter, uploads, budget, bodies, disk, timeout_s: float) -> None:
    """Serve ``/v1/segment`` on ``app`` with ``segmenter``: uploads wait in ``uploads`` (an
    ``edgeseg.serve.uploads.ModelQueue``), their volumes held in ``budget``; ``bodies`` (an
    ``edgeseg.serve.request_body.BodyReader``) saves a request's body in ``disk`` (an
    ``edgeseg.serve.upload_disk.UploadDisk``); ``timeout_s`` bounds the wait for the model to start."""
    from fastapi.responses import StreamingResponse
    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool

    from edgeseg.runtime.provenance import provenance, provenance_json

    record = provenance(segmenter)

    async def segmented(request, format: str, tmp: Path, on_disk) -> tuple[Path, str]:
        # to a file as it arrives: the reader takes it from there, and its bytes are never held
        # in memory beside the volume they decode to
        body = await bodies.save(request, tmp / "body", on_disk)
        submitted(uploads.reserve)  # a place first: at most --queue-size decoded volumes wait
        queued = False  # once queued, the model queue gives the place back itself
        try:
            with budget.holding("the upload's volume") as held:
                # only the model call holds the model: reading and writing the files do not
                try:  # the volume's bytes are taken from the budget before its pixels are allocated
                    volume = await run_in_threadpool(read_upload, body, format, tmp, held)
                except BaseException:
                    if held.refusal is not None:  # whatever the reader made of it
                        raise refused(held.refusal) from None
                    raise
                # the mask is written beside the body: its bytes are taken now, before the model is
                # spent on an upload whose answer the disk budget could not hold
                hold(on_disk, on_disk.nbytes + mask_bytes(volume.hu.size))
                result, started = uploads.submit(lambda: segmenter.predict_volume(volume))
                queued = True
                labels = await _upload_result(result, started, timeout_s, request.receive)
                return await run_in_threadpool(write_mask, labels, volume, format, tmp, record)
        finally:
            if not queued:
                uploads.release()

    @app.post("/v1/segment")
    async def segment(request: Request, format: str = "npy"):
        # the body's bytes are given back once its folder is gone, not before
        with disk.budget.holding("the upload's files (body and mask)") as on_disk:
            try:
                tmp = Path(tempfile.mkdtemp(prefix="edgeseg-upload-", dir=disk.folder))
            except OSError as exc:
                raise _unwritable(exc, disk.folder) from None
            try:
                mask, media = await segmented(request, format, tmp, on_disk)
                # sent from the open file: the volume and labels are freed before sending starts, and
                # the mask is never held in memory whole; its folder goes now, whatever the client does
                handle = open(mask, "rb")
            except OSError as exc:
                raise _unwritable(exc, disk.folder) from None
            finally:
                await _removed(tmp)
        size = os.fstat(handle.fileno()).st_size
        # NPY has no room for it: the header says what made every mask, whatever its format
        headers = {"Content-Length": str(size), "X-Edgeseg-Provenance": provenance_json(record)}
        return StreamingResponse(_chunks(handle), media_type=media, headers=headers,
                                 background=BackgroundTask(handle.close))


def _unwritable(exc: OSError, folder: Path | None) -> Exception:
    """The disk refusing an upload's files (its folder, body, decompressed body, mask): 507 where
    there is no room (a full disk, a quota, a file size limit), logged here as one line naming
    the file, or a 500 for any other refusal, whose message (naming the file) only the server's
    log gets. An OSError with neither errno nor text is a reader's complaint about the upload's
    bytes, and stays what it is."""
    full = disk_full(exc)
    if exc.errno is None and exc.strerror is None and not full:
        return exc
    path = exc.filename or folder or tempfile.gettempdir()
    if full:
        log.error("POST /v1/segment: cannot write the upload's file %s: %s", path, exc.strerror or exc)
        return no_room()
    return HttpError(500, f"cannot write the upload's file {path}: {exc.strerror or exc}")


async def _removed(tmp: Path) -> None:
    """Remove an upload's folder, off the event loop; or on it where the request's task is
    cancelled (a shutdown past its grace period): every await of a cancelled task is cancelled
    in turn, so the removal would never run and the files would stay on disk for good."""
    from starlette.concurrency import run_in_threadpool

    try:
        await run_in_threadpool(shutil.rmtree, tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


async def _chunks(handle):
    from starlette.concurrency import run_in_threadpool

    try:
        while chunk := await run_in_threadpool(handle.read, 1 << 20):
            yield chunk
    finally:
        handle.close()


async def _upload_result(result: Future, started: Future, timeout_s: float, receive):
    """An upload's labels: 504 (and its call dropped) when the model has not started on it within
    ``timeout_s`` of it being queued, 499 (dropped too) when its client left before that; once
    started, a whole volume's call runs to its end (it cannot be stopped part-way, and a volume
    may take longer than one request's slices)."""
    outcome = await first_of(asyncio.wrap_future(started), receive, timeout_s)
    if outcome != "done" and result.cancel():  # still waiting: it never runs
        if outcome == "gone":
            raise HttpError(CLIENT_CLOSED, "the client closed the connection while its upload waited for the model")
        raise HttpError(504, f"the model did not start on the upload within {timeout_s} s")
    try:
        return await asyncio.wrap_future(result)
    except QueueFull as exc:  # the app was closed while the upload waited
        raise refused(exc) from None
