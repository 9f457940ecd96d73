"""The connection and call limits of ``edgeseg serve --grpc-port``, derived from serve's options.

gRPC core reads each call's whole message into memory before the service sees it, so the
in-flight budget (``--max-inflight-bytes``) counts a message only once it is decoded: without a
limit on calls, N clients sending messages of up to ``--max-body-mb`` hold N such messages. At
most ``budget // max body`` calls are taken at once (at least one), so the messages gRPC holds
never exceed one budget; a call beyond that is refused ``RESOURCE_EXHAUSTED`` before its message
is read. The other limits are HTTP's ``--timeout``, as the HTTP side applies it to a request's
headers and body: a connection that has not finished its HTTP/2 preface within it is closed, as
is one with no call for that long (GOAWAY: a gRPC client reconnects on its next call); the
keepalive PING has the same period and wait. A connection lives at most ``AGE_TIMEOUTS`` times
``--timeout``; then its calls in flight get ``--timeout`` + 5 s to finish (as at a stop), so a
client that never reads its answer does not hold it, or its call's place, for good. Every option
is a channel argument of gRPC core's ``grpc_types.h`` older than grpcio 1.51.1, the floor.
"""

from __future__ import annotations

# A connection's lifetime, in --timeout: 10 minutes at the default 30 s
AGE_TIMEOUTS = 20
# gRPC core's own default for a call's metadata (headers), stated so the documented limit holds
METADATA_BYTES = 8 << 10


def concurrent_calls(budget_bytes: int, max_body_bytes: int) -> int:
    """Most gRPC calls taken at once: as many messages of the largest size as the budget holds."""
    return max(1, budget_bytes // max_body_bytes)


def server_options(max_body_bytes: int, budget_bytes: int, timeout_s: float) -> tuple[list, int]:
    """(channel arguments, maximum concurrent calls) of the gRPC server."""
    calls = concurrent_calls(budget_bytes, max_body_bytes)
    timeout_ms = max(1, round(timeout_s * 1000))
    options = [("grpc.max_receive_message_length", max_body_bytes),
               ("grpc.max_send_message_length", -1),
               # a second server on a port held already must fail, not share it
               ("grpc.so_reuseport", 0),
               # one connection's calls beyond the limit wait at the client rather than be refused
               ("grpc.max_concurrent_streams", calls),
               ("grpc.max_metadata_size", METADATA_BYTES),
               ("grpc.server_handshake_timeout_ms", timeout_ms),
               ("grpc.max_connection_idle_ms", timeout_ms),
               ("grpc.keepalive_time_ms", timeout_ms),
               ("grpc.keepalive_timeout_ms", timeout_ms),
               ("grpc.max_connection_age_ms", AGE_TIMEOUTS * timeout_ms),
               ("grpc.max_connection_age_grace_ms", timeout_ms + 5000)]
    return options, calls
