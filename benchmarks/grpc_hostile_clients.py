"""Hostile clients against ``edgeseg serve --grpc-port``, measured: what the server holds and
whether it lets go.

    python benchmarks/grpc_hostile_clients.py BUNDLE large  [--clients 16] [--mib 48] [SERVE OPTIONS...]
    python benchmarks/grpc_hostile_clients.py BUNDLE idle   [--clients 8] [--wait 150] [SERVE OPTIONS...]
    python benchmarks/grpc_hostile_clients.py BUNDLE unread [--wait 150] [SERVE OPTIONS...]
    python benchmarks/grpc_hostile_clients.py BUNDLE metadata [SERVE OPTIONS...]

``large``: CLIENTS grpcio channels each send one ModelInfer message of MIB MiB at once: the
server's peak RSS (VmHWM) before and after, and the answers' status codes. ``idle``: connections that send nothing, half a preface, or a whole preface and no
call: when the server closes each. ``unread``: a call whose client never reads (nor answers a
PING), and one that reads and answers PINGs but grants no window: when each is closed.
``metadata``: calls with metadata of growing size: the status of each. SERVE OPTIONS go to
``edgeseg serve`` as they are (``--max-body-mb 64 --max-inflight-bytes ...``).
"""

from __future__ import annotations

import argparse
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serve.http2_raw import GOAWAY, connect, grpc_call, read_frames  # noqa: E402
from tests.ports import reserved_port  # noqa: E402

INFER = "/inference.GRPCInferenceService/ModelInfer"


def _hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def _serve(bundle: str, options: list[str]):
    grpc_port, port = reserved_port(), reserved_port()
    edgeseg = Path(sys.executable).with_name("edgeseg")
    proc = subprocess.Popen([str(edgeseg), "serve", bundle, "--port", str(port), "--grpc-port", str(grpc_port),
                             "--backend", "onnxruntime:fp32", *options])
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    grpc.channel_ready_future(channel).result(timeout=120)
    channel.close()
    return proc, grpc_port


def _infer_message(mib: int) -> bytes:
    from tritonclient.grpc import service_pb2

    side = 1024
    slices = max(1, (mib << 20) // (side * side * 2))
    request = service_pb2.ModelInferRequest(model_name="edgeseg-pipeline")
    request.inputs.add(name="hu", datatype="INT16", shape=[slices, side, side])
    request.raw_input_contents.append(b"\x18\xfc" * (slices * side * side))  # -1000 HU
    return request.SerializeToString()


def large(proc, port, args) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest.FromString(_infer_message(args.mib))
    idle = _hwm_mib(proc.pid)
    codes = []

    def call():
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1),
                                                                              ("grpc.max_receive_message_length", -1)])
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=600)
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(f"{exc.code().name}: {' '.join(exc.details().split())[:90]}")
        finally:
            channel.close()

    clients = [threading.Thread(target=call) for _ in range(args.clients)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    counts = {code: codes.count(code) for code in sorted(set(codes))}
    print(f"large: {args.clients} concurrent clients x {request.ByteSize() / 2**20:.1f} MiB; peak RSS idle "
          f"{idle:.0f} MiB, after {_hwm_mib(proc.pid):.0f} MiB; statuses {counts}")


def _close_times(socks: dict, wait: float) -> dict:
    start, closed = time.monotonic(), {}
    open_ = dict(socks)
    while open_ and time.monotonic() - start < wait:
        ready, _, _ = select.select(list(open_), [], [], 1)
        for s in ready:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                closed[open_.pop(s)] = round(time.monotonic() - start, 1)
    for name in open_.values():
        closed[name] = f"open after {wait:.0f} s"
    return closed


def idle(proc, port, args) -> None:
    socks = {}
    for i in range(args.clients):
        socks[connect(port, preface=False)] = f"nothing sent {i}"
        s = connect(port, preface=False)
        s.sendall(b"PRI * HTTP/2.0\r\n")
        socks[s] = f"half a preface {i}"
    start, polite = time.monotonic(), {}

    def watch(name):  # a whole preface, SETTINGS and PINGs answered, no call
        frames = read_frames(connect(port), args.wait)
        end = "open after" if not frames or frames[-1] is not None else "closed"
        polite[name] = f"{end} {time.monotonic() - start:.1f} s"

    watchers = [threading.Thread(target=watch, args=(f"whole preface, no call {i}",)) for i in range(args.clients)]
    for t in watchers:
        t.start()
    closed = _close_times(socks, args.wait)
    for t in watchers:
        t.join()
    for name, when in sorted({**closed, **polite}.items()):
        print(f"idle: {name}: closed {when}")


def unread(proc, port, args) -> None:
    message = _infer_message(8)
    deaf = connect(port, receive_window=0)
    deaf.sendall(grpc_call(1, INFER, message, port))
    polite = connect(port, receive_window=0)
    polite.sendall(grpc_call(1, INFER, message, port))
    start, result = time.monotonic(), {}

    def watch(sock, name, answer):
        frames = read_frames(sock, args.wait, answer_pings=answer)
        end = "closed" if frames and frames[-1] is None else f"open after {args.wait:.0f} s"
        goaway = any(f is not None and f[0] == GOAWAY for f in frames)
        result[name] = f"{end} at {time.monotonic() - start:.1f} s (GOAWAY {goaway})"

    time.sleep(5)
    rss = _hwm_mib(proc.pid)
    watchers = [threading.Thread(target=watch, args=(polite, "reads, answers PINGs, grants no window", True))]
    watchers[0].start()
    # the deaf client reads nothing at all: its socket is left as it is until the wait is over
    closed = _close_times({deaf: "never reads"}, args.wait)
    for t in watchers:
        t.join()
    print(f"unread: peak RSS {rss:.0f} MiB; never reads: closed {closed['never reads']}; {result}")


def metadata(proc, port, args) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    for size in (4 << 10, 7 << 10, 9 << 10, 16 << 10, 64 << 10, 1 << 20):
        try:
            stub.ServerLive(service_pb2.ServerLiveRequest(), metadata=(("x-big", "a" * size),), timeout=30)
            status = "OK"
        except grpc.RpcError as exc:
            status = f"{exc.code().name}: {exc.details()}"
        print(f"metadata: {size} bytes: {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("scenario", choices=("large", "idle", "unread", "metadata"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--mib", type=int, default=48)
    parser.add_argument("--wait", type=float, default=150)
    args, serve_options = parser.parse_known_args()
    proc, port = _serve(args.bundle, serve_options)
    try:
        globals()[args.scenario](proc, port, args)
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
