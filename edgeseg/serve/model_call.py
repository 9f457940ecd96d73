"""One inference request of a served model, whatever carried it: the model looked up by name, its
input checked, its bytes held, queued for the micro-batcher, waited for and answered.

The HTTP routes (``edgeseg.serve.app``) and the gRPC service (``edgeseg.serve.grpc_service``)
both answer ``infer`` through :func:`run_request`, so a request is checked, limited, batched and
counted the same way on either; refusals are :class:`~edgeseg.serve.http_errors.HttpError`,
which each protocol turns into its own status.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import Future

from edgeseg.serve.batcher import QueueFull
from edgeseg.serve.client_gone import first_of
from edgeseg.serve.http_errors import CLIENT_CLOSED, HttpError, hold, refused, submitted
from edgeseg.serve.models import ServedModel


def find_model(models: dict[str, ServedModel], name: str, version: str | None = None) -> ServedModel:
    """The served model ``name`` (version ``1``, or none given); HttpError 404 otherwise."""
    if name not in models:
        raise HttpError(404, f"unknown model {name!r}; this server serves {sorted(models)}")
    if version not in (None, "", "1"):
        raise HttpError(404, f"model {name!r} has no version {version!r}; it has version '1'")
    return models[name]


async def run_request(model: ServedModel, decoded, budget, timeout_s: float, start_ns: int, encode, receive=None):
    """``encode(result)`` (awaited) of the decoded request ``decoded`` run by ``model``: the
    outputs asked for and the inputs are checked before it is queued (HttpError 400, or a
    ModelInputError), its input's bytes are held from ``budget`` while it is in flight, and the
    model's statistics count it from ``start_ns`` (when its decoding began). ``receive`` (an ASGI
    receive) lets a request whose client went away be dropped from the queue; without it, the
    caller's task being cancelled does the same."""
    if decoded.outputs is not None and set(decoded.outputs) - {model.output_name}:
        raise HttpError(400, f"model {model.name!r} has one output {model.output_name!r}, asked for {decoded.outputs}")
    # refused before it is queued, as Triton refuses a request it cannot take (a malformed one, a
    # full queue): answered, but not a failed inference of the model
    array = model.checked(decoded.inputs)
    with budget.holding(f"a request to model {model.name!r}") as held:
        hold(held, array.nbytes)
        queued = time.perf_counter_ns()
        ticket = submitted(model.batcher.submit, array)
        ok = False
        try:
            result = await wait_result(ticket, timeout_s, receive)
            answered = time.perf_counter_ns()
            answer = await encode(result)
            ok = True
        finally:
            end = time.perf_counter_ns()
            if ok:
                model.stats.record_success(end - start_ns, int(array.shape[0]), queue=ticket.queue_ns,
                                           compute_input=queued - start_ns, compute_infer=ticket.infer_ns,
                                           compute_output=end - answered)
            else:
                model.stats.record_failure(end - start_ns)
    return answer


async def in_turn(codec: asyncio.Semaphore, function, *args):
    """``function(*args)`` in a worker thread while ``codec`` is held (one request's values decoded,
    or its answer encoded, at a time). ``codec`` stays held until the thread has returned, even
    where the awaiting task is cancelled meanwhile (a gRPC client that cancels, a deadline that
    passes): the cancellation is raised once the thread is done, so that a cancelled request's
    decoding never runs beside the next one's."""
    async with codec:
        work = asyncio.ensure_future(asyncio.to_thread(function, *args))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            while not work.done():
                try:
                    await asyncio.wait({work})
                except asyncio.CancelledError:  # cancelled again: the thread still holds the turn
                    continue
            if not work.cancelled():
                work.exception()  # what it raised goes with the cancelled request
            raise


async def wait_result(ticket: Future, timeout_s: float, receive=None):
    """The result of a request queued for the model: 504 (and the request dropped, where its batch
    has not started) when it is not done within ``timeout_s`` of being queued; 499 (dropped too)
    when its client (of ASGI ``receive``) left before its batch started. Once started, a batch
    runs to its end. Cancelling the awaiting task cancels ``ticket`` as well."""
    waiter = asyncio.wrap_future(ticket)
    deadline = time.monotonic() + timeout_s
    if receive is not None and await first_of(waiter, receive, timeout_s) == "gone" and ticket.cancel():
        raise HttpError(CLIENT_CLOSED, "the client closed the connection while its request waited for the model")
    try:  # done, late, or its client left after its batch started (nobody reads its answer)
        return await asyncio.wait_for(waiter, max(0.0, deadline - time.monotonic()))
    except QueueFull as exc:  # the app was closed while the request waited
        raise refused(exc) from None
    except asyncio.TimeoutError:
        ticket.cancel()
        raise HttpError(504, f"inference did not finish within {timeout_s} s") from None


def triton_config(model: ServedModel) -> dict:
    """The model configuration in the JSON form Triton answers ``/config`` with (and, as a
    ``ModelConfig`` message, its gRPC ``ModelConfig``)."""
    meta = model.metadata()

    def tensor(entry: dict, batched: bool) -> dict:
        dims = entry["shape"][1:] if batched else entry["shape"]
        return {"name": entry["name"], "data_type": "TYPE_" + entry["datatype"], "dims": dims}

    batched = meta["platform"] != "edgeseg_pipeline"
    config = {"name": model.name, "platform": meta["platform"], "backend": "edgeseg",
              "max_batch_size": model.max_batch if batched else 0,
              "input": [{**tensor(t, batched), "optional": t.get("optional", False)} for t in meta["inputs"]],
              "output": [tensor(t, batched) for t in meta["outputs"]],
              "dynamic_batching": {"max_queue_delay_microseconds": int(model.batcher.max_delay * 1e6)}}
    if "parameters" in meta:
        # Triton's parameters are strings: text as it is, anything else as JSON (not Python's repr)
        config["parameters"] = {key: {"string_value": value if isinstance(value, str) else json.dumps(value)}
                                for key, value in meta["parameters"].items()}
    return config
