"""Where the DICOM node's memory goes, one component at a time (docs/results.md, "Soak").

Starts a target in a child process (glibc capped at 2 arenas, as ``edgeseg listen`` runs) and sends
it associations from this process with pynetdicom as the SCU; every ``--every`` associations the
child appends one JSON line to ``--jsonl``: VmRSS, glibc's ``mallinfo2()`` (heap size, bytes in
use and free), anonymous memory (``/proc/self/smaps_rollup``), pymalloc's arenas and blocks, the
count of live Python objects, and with ``--trim`` the same after ``malloc_trim(0)`` (``--trim-final``:
at the last line only, so that the samples before it observe and change nothing); with
``--trace-at N`` tracemalloc starts after N associations and a snapshot is dumped beside the JSONL
at each line (compare them with ``Snapshot.compare_to``); with ``--trace-windows A,B`` it runs
only from A to A + ``--trace-length`` associations (and so on), a snapshot at each window's end
holding what the window allocated and kept. ``--minutes`` ends the sending after that long.

Targets: ``bare`` (a pynetdicom AE whose C-STORE handler only writes the file), ``node``
(``DicomNode`` with BUNDLE, ONNX Runtime FP32, one thread) and ``listen`` (the ``edgeseg listen``
command itself in the child; ``--trim-after-series S`` adds a thread to the child that calls
``malloc_trim(0)`` once a second when a SEG was written since its last trim, at most once per S
seconds: the trim after each series weighed in docs/results.md, "Soak", and not kept). Each line has the child's CPU seconds and minor page faults too. Loads: ``echo``, ``refused`` (a
called AE title the node refuses), ``store`` (the dcmqi series, its own UIDs each time),
``mixed`` (in turn: the series with fresh UIDs, the same again, a refused one, an echo).

    OMP_NUM_THREADS=1 nice python benchmarks/listen_memory.py node BUNDLE --load mixed \\
        --associations 2000 --every 200 --quiet 4 --trim --jsonl node.jsonl
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

SERIES = Path(__file__).resolve().parents[1] / "tests" / "data" / "dcmqi_ct_liver" / "ct-3slice"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _memory(libc) -> dict:
    status = {key: int(value.split()[0]) for key, value in
              (line.split(":", 1) for line in open("/proc/self/status")) if key in ("VmRSS", "Threads")}
    rollup = {key: int(value.split()[0]) for key, value in
              (line.split(":", 1) for line in open("/proc/self/smaps_rollup") if ":" in line and "-" not in line[:20])}
    info = libc.mallinfo2()
    return {"rss_kib": status["VmRSS"], "anon_kib": rollup.get("Anonymous", -1), "threads": status["Threads"],
            "heap": info.arena, "in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd,
            "pymalloc_blocks": sys.getallocatedblocks(), **_cpu()}


def _cpu() -> dict:
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    return {"cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), "minflt": int(fields[7])}


def _pymalloc_arenas() -> int:
    with tempfile.TemporaryFile("w+") as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        found = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", captured.read())
    return int(found.group(1).replace(",", "")) if found else -1


def _trim_after_series(libc, out: Path, every: float) -> None:
    """Once a second: ``malloc_trim(0)`` if a SEG was written to ``out`` since the last trim (its
    modification time moved) and ``every`` seconds have passed since it."""
    trimmed, last = None, -math.inf
    while True:
        time.sleep(1)
        written = out.stat().st_mtime_ns if out.is_dir() else None
        if written != trimmed and time.monotonic() - last >= every:
            libc.malloc_trim(0)
            trimmed, last = written, time.monotonic()


def target(kind: str, port: int, work: Path, jsonl: Path, bundle: str, trim: bool, frames: int,
           windowed: bool = False, trim_every: float = math.inf) -> None:
    """The child: serve on ``port``; SIGUSR1 appends a line to ``jsonl`` (SIGHUP: one trimmed after
    it), SIGUSR2 starts tracemalloc (``windowed``: stopped after the next line's snapshot)."""
    from edgeseg.serve import malloc_arenas

    malloc_arenas.cap_malloc_arenas()
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    snapshots = [0]

    def report(signum, frame) -> None:
        line = {"time": time.time(), **_memory(libc)}
        if trim or signum == signal.SIGHUP:  # before the counting below allocates (and frees) megabytes
            libc.malloc_trim(0)
            line["trimmed"] = _memory(libc)
        line.update(pymalloc_arenas=_pymalloc_arenas(), python_objects=len(gc.get_objects()))
        if tracemalloc.is_tracing():
            line["traced"] = tracemalloc.get_traced_memory()[0]
            line["snapshot"] = f"{jsonl.name}.snap{snapshots[0]}"
            tracemalloc.take_snapshot().dump(str(jsonl.with_name(line["snapshot"])))
            snapshots[0] += 1
            if windowed:
                tracemalloc.stop()
        with open(jsonl, "a") as out:
            out.write(json.dumps(line) + "\n")

    signal.signal(signal.SIGUSR1, report)
    signal.signal(signal.SIGHUP, report)
    signal.signal(signal.SIGUSR2, lambda signum, frame: tracemalloc.start(frames))
    if kind == "listen":  # the command, as an operator starts it; it prints its one line when listening
        from edgeseg.cli.main import cli

        if trim_every < math.inf:
            threading.Thread(target=_trim_after_series, args=(libc, work / "out", trim_every), daemon=True).start()

        cli(["listen", bundle, "--port", str(port), "--out", str(work / "out"), "--idle", "1",
             "--backend", "onnxruntime:fp32", "--threads", "1"])
        return
    if kind == "bare":
        from pynetdicom import AE, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        def on_store(event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            ds.save_as(work / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            return 0

        ae = AE(ae_title="EDGESEG")
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 16382
        ae.start_server(("127.0.0.1", port), block=False,
                        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, lambda event: 0)])
    else:
        from edgeseg.runtime.segmenter import Segmenter
        from edgeseg.serve.dicom_node import DicomNode

        segmenter = Segmenter.load(bundle, backend="onnxruntime:fp32", threads=1)
        DicomNode(segmenter, port=port, out=work / "out", idle=1.0, work=work / "work").start()
    print("ready", flush=True)
    threading.Event().wait()


def _send(ae, port: int, load: str, datasets) -> None:
    from pydicom.uid import generate_uid

    assoc = ae.associate("127.0.0.1", port, ae_title="NOTEDGESEG" if load == "refused" else "EDGESEG")
    if not assoc.is_established:
        return
    if load == "echo":
        assoc.send_c_echo()
    else:
        if load == "fresh":
            study, series = generate_uid(), generate_uid()
            for ds in datasets:
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for ds in datasets:
            assoc.send_c_store(ds)
    assoc.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["bare", "node", "listen"])
    parser.add_argument("bundle", nargs="?", default="")
    parser.add_argument("--load", choices=["echo", "refused", "store", "mixed"], default="mixed")
    parser.add_argument("--associations", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--quiet", type=float, default=0.0, help="seconds to wait before each line (nothing in flight)")
    parser.add_argument("--trim", action="store_true")
    parser.add_argument("--trim-final", action="store_true")
    parser.add_argument("--minutes", type=float, default=0.0, help="end the sending after this long (0: never)")
    parser.add_argument("--trace-at", type=int, default=0)
    parser.add_argument("--trace-windows", default="", help="A,B,...: trace from A to A + --trace-length")
    parser.add_argument("--trace-length", type=int, default=100)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--trim-after-series", type=float, default=math.inf, metavar="S",
                        help="listen: malloc_trim(0) after a SEG is written, at most once per S seconds")
    parser.add_argument("--jsonl", type=Path, required=True)
    parser.add_argument("--target", nargs=2, metavar=("PORT", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind != "bare" and not args.bundle:
        raise SystemExit(f"the {args.kind} target needs BUNDLE")
    if args.target:
        target(args.kind, int(args.target[0]), Path(args.target[1]), args.jsonl, args.bundle, args.trim, args.frames,
               bool(args.trace_windows), args.trim_after_series)
        return
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification
    from serve_upload_rss import _free_port

    args.jsonl.unlink(missing_ok=True)
    port, work = _free_port(), Path(tempfile.mkdtemp(prefix="listen-memory-"))
    child = subprocess.Popen([sys.executable, __file__, args.kind, args.bundle, "--jsonl", str(args.jsonl),
                              "--frames", str(args.frames), "--target", str(port), str(work)]
                             + ["--trim"] * args.trim + ["--trace-windows", args.trace_windows] * bool(args.trace_windows)
                             + ["--trim-after-series", str(args.trim_after_series)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        if not child.stdout.readline().startswith((b"ready", b"DICOM node")):
            raise SystemExit("the target did not start")
        datasets = [pydicom.dcmread(path) for path in sorted(SERIES.glob("*.dcm"))]
        ae = AE(ae_title="SOAK")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage, [str(datasets[0].file_meta.TransferSyntaxUID)])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        loads = ["fresh", "store", "refused", "echo"] if args.load == "mixed" else [args.load]
        began, failed = time.monotonic(), 0
        windows = [int(start) for start in args.trace_windows.split(",") if start]
        starts, ends = set(windows) | ({args.trace_at} - {0}), {start + args.trace_length for start in windows}
        for sent in range(args.associations + 1):
            last = sent == args.associations or (args.minutes and time.monotonic() - began > args.minutes * 60)
            if sent % args.every == 0 or sent in ends or last:
                time.sleep(args.quiet)
                child.send_signal(signal.SIGHUP if last and args.trim_final else signal.SIGUSR1)
                time.sleep(0.5)
                print(sent, f"{time.monotonic() - began:.0f} s", flush=True)
            if sent in starts and not last:
                time.sleep(args.quiet)
                child.send_signal(signal.SIGUSR2)
            if last:
                args.associations = sent
                break
            try:
                _send(ae, port, loads[sent % len(loads)], datasets)
            except (RuntimeError, OSError) as exc:  # the association ended under it: counted, not fatal
                failed += 1
                print(f"association {sent + 1}: {exc}", flush=True)
        print(f"{args.associations} associations ({failed} failed) in {time.monotonic() - began:.0f} s")
    finally:
        child.terminate()
        child.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
