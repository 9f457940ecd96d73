"""``POST /v1/segment``: a whole file in, its mask out (the three steps are in
``edgeseg.serve.uploads``).

An upload takes a place in the upload queue before its body is decoded, so that at most
``--queue-size`` decoded volumes wait; the place is given back when its model call starts, or
on whatever path the upload leaves by before that (a refusal, a failed reading, a temporary
folder that cannot be made, a client gone while it waited).
"""

from __future__ import annotations

import asyncio
import tempfile
from concurrent.futures import Future
from pathlib import Path

from edgeseg.errors import require
from edgeseg.serve.client_gone import first_of
from edgeseg.serve.http_errors import CLIENT_CLOSED, HttpError, refused, submitted
from edgeseg.serve.uploads import read_upload, write_mask

# Imported only by the server's app, so the missing-extra message is the right failure here; at
# module level because FastAPI reads the route's parameter annotations from the module's names.
fastapi = require("fastapi", "serve", "edgeseg serve")
Request = fastapi.Request


def add_segment_route(app, segmenter, uploads, budget, read_body, timeout_s: float) -> None:
    """Serve ``/v1/segment`` on ``app`` with ``segmenter``: uploads wait in ``uploads`` (an
    ``edgeseg.serve.uploads.ModelQueue``), their volumes held in ``budget``; ``read_body`` reads
    and decodes a request's body; ``timeout_s`` bounds the wait for the model to start."""
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    from edgeseg.runtime.provenance import provenance, provenance_json

    record = provenance(segmenter)

    @app.post("/v1/segment")
    async def segment(request: Request, format: str = "npy"):
        body = await read_body(request)
        submitted(uploads.reserve)  # a place first: at most --queue-size decoded volumes wait
        queued = False  # once queued, the model queue gives the place back itself
        try:
            with budget.holding("the upload's volume") as held, \
                    tempfile.TemporaryDirectory(prefix="edgeseg-upload-") as tmp:
                # only the model call holds the model: reading and writing the files do not
                try:  # the volume's bytes are taken from the budget before its pixels are allocated
                    volume = await run_in_threadpool(read_upload, body, format, Path(tmp), held)
                except BaseException:
                    if held.refusal is not None:  # whatever the reader made of it
                        raise refused(held.refusal) from None
                    raise
                result, started = uploads.submit(lambda: segmenter.predict_volume(volume))
                queued = True
                labels = await _upload_result(result, started, timeout_s, request.receive)
                payload, media = await run_in_threadpool(write_mask, labels, volume, format, Path(tmp), record)
        finally:
            if not queued:
                uploads.release()
        # NPY has no room for it: the header says what made every mask, whatever its format
        return Response(content=payload, media_type=media, headers={"X-Edgeseg-Provenance": provenance_json(record)})


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
    return await asyncio.wrap_future(result)
