"""libedgeseg against the Python runtime on the same OpenVINO model: latency, cold start, memory.

    python benchmarks/capi_report.py [--bundle NAME=DIR ...] [--runs 40] [--cold 5] [--threads N] [--json OUT]

For each bundle and precision (int8, fp32), on one 512x512 int16 phantom slice:

- end-to-end latency of ``es_segment_slice`` (C, called through ctypes) and of
  ``Segmenter.predict`` (Python), in turns in one process so that both meet the same machine
  load; and, in a C process of its own, ``es_segment_slice`` in turns with the model alone (the
  same ONNX file compiled with the same OpenVINO settings, through OpenVINO's C API); medians;
- cold start: wall time of a new process from its start to its first mask, for a C program and
  for ``python -c "...Segmenter.load(...).predict(...)"``, without a compiled-model cache (a
  fresh, empty cache folder each run) and with one (OpenVINO ``CACHE_DIR``, ONNX Runtime's
  optimised graph; filled by an earlier run); Python with OpenVINO and with ONNX Runtime, and
  Python's imports alone for reference; medians of ``--cold`` runs, interleaved;
- the CPU time (user + system) of those processes, which a busy machine hardly changes, and
  their peak resident memory (VmHWM).

Without ``--bundle`` the two bundles of the report are made with random weights (latency does
not depend on them) by benchmarks/random_bundle.py: ``demo`` (128x128, base 16, depth 4,
the model ``make demo`` trains) and ``unet256`` (256x256, base 32, depth 4, the default model).
The SDK and the timing program (benchmarks/capi/bench_capi.c) are built into a temporary folder.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIDE = 512
PY_IMPORTS = ("import numpy, openvino, onnxruntime\n"
              "from edgeseg.runtime import Segmenter\n"
              "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).replace('VmHWM:', 'vmhwm_kb').replace('kB', ''))\n")
PY_COLD = ("import sys, numpy as np\n"
           "from edgeseg.runtime import Segmenter\n"
           "hu = np.fromfile(sys.argv[1], dtype='<i2').reshape({side}, {side})\n"
           "Segmenter.load(sys.argv[2], backend=sys.argv[3], threads=int(sys.argv[4])).predict(hu)\n"
           "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).replace('VmHWM:', 'vmhwm_kb').replace('kB', ''))\n")


def build(tmp: Path) -> Path:
    """``make -C csrc/sdk`` into tmp/sdk, then bench_capi against it and OpenVINO's C API."""
    import openvino

    sdk = tmp / "sdk"
    subprocess.run(["make", "-s", "-C", str(ROOT / "csrc" / "sdk"), f"OUT={sdk}", f"PY={sys.executable}"], check=True)
    ov = Path(openvino.__file__).resolve().parent
    ov_c = sorted((ov / "libs").glob("libopenvino_c.so*"))[0]
    exe = tmp / "bench_capi"
    subprocess.run(["cc", "-std=c99", "-O2", "-o", str(exe), str(ROOT / "benchmarks" / "capi" / "bench_capi.c"),
                    f"-I{sdk / 'include'}", f"-I{ov / 'include'}", f"-L{sdk / 'lib'}", f"-Wl,-rpath,{sdk / 'lib'}",
                    "-ledgeseg", str(ov_c), f"-Wl,-rpath,{ov / 'libs'}"], check=True)
    return exe


def make_bundles(tmp: Path) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from random_bundle import random_bundle

    shapes = {"demo": dict(base=16, depth=4, size=128), "unet256": dict(base=32, depth=4, size=256)}
    return {name: random_bundle(tmp / name, classes=2, int8=True, **shape) for name, shape in shapes.items()}


def timed_process(args: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float, float]:
    """(wall seconds from start to exit, CPU seconds, peak RSS in MiB) of one child process.
    CPU time (user + system, from wait4) hardly depends on how busy the machine is; wall time
    does. The child reports its own VmHWM: a child's ru_maxrss starts from the parent's size."""
    with tempfile.TemporaryFile(mode="w+") as err:  # a file, so stdout is the only pipe to drain
        start = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=cwd)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it: Popen's own wait would lose the rusage
        wall = time.perf_counter() - start
        proc.stdout.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{args[0]} failed: {err.read()[-500:]}")
    kb = next(int(line.split()[1]) for line in out.splitlines() if line.startswith("vmhwm_kb"))
    return wall, usage.ru_utime + usage.ru_stime, kb / 1024.0


class EsError(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("message", ctypes.c_char * 512)]


def load_library(sdk_lib: Path) -> ctypes.CDLL:
    from edgeseg.sdk import library_file

    # The SONAME, of the library on disk: libedgeseg.so is a linker script in a wheel, which
    # dlopen cannot load, and the folder may hold another major version than this package's.
    lib = ctypes.CDLL(str(library_file(sdk_lib)))
    lib.es_open.restype = ctypes.c_void_p
    lib.es_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(EsError)]
    lib.es_segment_slice.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                     ctypes.c_ssize_t, ctypes.c_void_p, ctypes.POINTER(EsError)]
    lib.es_close.argtypes = [ctypes.c_void_p]
    return lib


def interleaved_latency(lib: ctypes.CDLL, bundle: Path, precision: str, hu: np.ndarray, runs: int,
                        threads: int) -> dict[str, float]:
    """Medians (ms), measured in turns in this one process so both see the same machine load:
    es_segment_slice (through ctypes, a few microseconds), Segmenter.predict, and the model
    alone in Python (Segmenter.infer)."""
    from edgeseg.kernels import preprocess
    from edgeseg.runtime import Segmenter

    err = EsError()
    handle = lib.es_open(str(bundle).encode(), precision.encode(), threads, ctypes.byref(err))
    if not handle:
        raise RuntimeError(err.message.decode())
    labels = np.empty(hu.shape, np.uint8)
    args = (handle, hu.ctypes.data, 1, hu.shape[0], hu.shape[1], hu.shape[1], labels.ctypes.data, ctypes.byref(err))
    times: dict[str, list[float]] = {"c_e2e_ms": [], "py_e2e_ms": [], "py_model_ms": []}
    with Segmenter.load(bundle, backend=f"openvino:{precision}", threads=threads) as seg:
        batch = preprocess(hu, seg.spec)
        calls = {"c_e2e_ms": lambda: lib.es_segment_slice(*args), "py_e2e_ms": lambda: seg.predict(hu),
                 "py_model_ms": lambda: seg.infer(batch)}
        for i in range(runs + 3):
            for name, call in calls.items():
                t0 = time.perf_counter()
                rc = call()
                if i >= 3:  # three warm-up rounds
                    times[name].append((time.perf_counter() - t0) * 1e3)
                if name == "c_e2e_ms" and rc != 0:
                    raise RuntimeError(err.message.decode())
        if not np.array_equal(labels, seg.predict(hu)):
            raise RuntimeError(f"{bundle} {precision}: C and Python masks differ")
    lib.es_close(handle)
    return {name: statistics.median(v) for name, v in times.items()}


def c_latency(exe: Path, bundle: Path, precision: str, raw: Path, runs: int, threads: int,
              env: dict[str, str]) -> tuple[float, float]:
    from edgeseg.runtime.manifest import read_manifest

    manifest = read_manifest(bundle)
    entry = manifest.artifact("onnx", precision)
    out = subprocess.run([str(exe), "latency", str(bundle), precision, str(raw), str(SIDE), str(SIDE), str(runs),
                          entry.file, str(manifest.spec.size[0]), str(threads)], env=env, check=True, capture_output=True, text=True)
    values = dict(line.split() for line in out.stdout.splitlines())
    return float(values["e2e_ms"]), float(values["model_ms"])


def cold_starts(exe: Path, bundle: Path, precision: str, raw: Path, runs: int, threads: int,
                tmp: Path) -> dict[str, tuple[float, ...]]:
    """Median (wall s, CPU s, peak RSS MiB) per way of starting, runs interleaved."""
    base = dict(os.environ, PYTHONPATH=str(ROOT))
    warm = tmp / f"warm-{bundle.name}-{precision}"
    c_args = [str(exe), "cold", str(bundle), precision, str(raw), str(SIDE), str(SIDE)]
    py_args = [sys.executable, "-c", PY_COLD.format(side=SIDE), str(raw), str(bundle), f"openvino:{precision}", str(threads)]
    ort_args = [*py_args[:-2], f"onnxruntime:{precision}", str(threads)]
    timed_process(c_args + [str(warm / "openvino"), str(threads)], base)  # fill the caches once
    timed_process(py_args, dict(base, EDGESEG_CACHE_DIR=str(warm)))
    timed_process(ort_args, dict(base, EDGESEG_CACHE_DIR=str(warm)))
    runs_of = {"c": lambda i: (c_args + ["-", str(threads)], base),
               "c_cached": lambda i: (c_args + [str(warm / "openvino"), str(threads)], base),
               "python": lambda i: (py_args, dict(base, EDGESEG_CACHE_DIR=str(tmp / f"fresh-{bundle.name}-{precision}-{i}"))),
               "python_cached": lambda i: (py_args, dict(base, EDGESEG_CACHE_DIR=str(warm))),
               "python_ort": lambda i: (ort_args, dict(base, EDGESEG_CACHE_DIR=str(tmp / f"fresh-ort-{bundle.name}-{precision}-{i}"))),
               "python_ort_cached": lambda i: (ort_args, dict(base, EDGESEG_CACHE_DIR=str(warm))),
               "python_imports": lambda i: ([sys.executable, "-c", PY_IMPORTS], base)}
    samples: dict[str, list[tuple[float, float, float]]] = {k: [] for k in runs_of}
    for i in range(runs):
        for name, make in runs_of.items():
            samples[name].append(timed_process(*make(i)))
    return {k: tuple(statistics.median(s[j] for s in v) for j in range(3)) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", default=[], help="NAME=DIR (repeatable)")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="OpenVINO / ONNX Runtime threads (0: their default)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--model-ratio-only", action="store_true",
                        help="only the C process's end to end against the model alone (no Python, no cold starts)")
    args = parser.parse_args()
    from edgeseg.data.phantom import synth_phantom

    with tempfile.TemporaryDirectory(prefix="capi-bench-") as name:
        tmp = Path(name)
        exe = build(tmp)
        lib = load_library(tmp / "sdk" / "lib")
        bundles = dict(b.split("=", 1) for b in args.bundle) if args.bundle else make_bundles(tmp)
        hu = np.round(synth_phantom("bench", 0, shape=(1, SIDE, SIDE)).hu[0]).astype(np.int16)
        raw = tmp / "slice.raw"
        hu.astype("<i2").tofile(raw)
        env = dict(os.environ, EDGESEG_CACHE_DIR=str(tmp / "cache"))
        os.environ["EDGESEG_CACHE_DIR"] = str(tmp / "cache")
        rows = []
        for label, bundle in bundles.items():
            for precision in ("int8", "fp32"):
                c_alone_e2e, c_model = c_latency(exe, Path(bundle), precision, raw, args.runs, args.threads, env)
                if args.model_ratio_only:
                    rows.append({"bundle": label, "precision": precision, "c_process_e2e_ms": c_alone_e2e,
                                 "c_model_ms": c_model, "ratio": c_alone_e2e / c_model, "load": os.getloadavg()[0]})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                turns = interleaved_latency(lib, Path(bundle), precision, hu, args.runs, args.threads)
                cold = cold_starts(exe, Path(bundle), precision, raw, args.cold, args.threads, tmp)
                rows.append({"bundle": label, "precision": precision, **turns, "c_process_e2e_ms": c_alone_e2e,
                             "c_model_ms": c_model,
                             **{f"cold_{k}_s": v[0] for k, v in cold.items()},
                             **{f"cold_{k}_cpu_s": v[1] for k, v in cold.items()},
                             **{f"rss_{k}_mib": v[2] for k, v in cold.items()}})
                print(json.dumps(rows[-1]), flush=True)
    if not args.model_ratio_only:
        print_table(rows)
        print_cpu_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def print_table(rows: list[dict]) -> None:
    print("\n| bundle | prec | C e2e ms | Python e2e ms | C/Python | C process: e2e / model ms | e2e/model | "
          "cold C s (no cache / cache) | cold Python OpenVINO s (no cache / cache) | "
          "cold Python ONNX Runtime s (no cache / cache) | Python imports s | RSS MiB C / Python |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bundle']} | {r['precision']} | {r['c_e2e_ms']:.2f} | {r['py_e2e_ms']:.2f} | "
              f"{r['c_e2e_ms'] / r['py_e2e_ms']:.3f} | {r['c_process_e2e_ms']:.2f} / {r['c_model_ms']:.2f} | "
              f"{r['c_process_e2e_ms'] / r['c_model_ms']:.3f} | "
              f"{r['cold_c_s']:.3f} / {r['cold_c_cached_s']:.3f} | {r['cold_python_s']:.3f} / {r['cold_python_cached_s']:.3f} | "
              f"{r['cold_python_ort_s']:.3f} / {r['cold_python_ort_cached_s']:.3f} | {r['cold_python_imports_s']:.3f} | "
              f"{r['rss_c_cached_mib']:.0f} / {r['rss_python_cached_mib']:.0f} |")


def print_cpu_table(rows: list[dict]) -> None:
    print("\n| bundle | prec | cold CPU s: C (no cache / cache) | Python OpenVINO (no cache / cache) | "
          "Python ONNX Runtime (no cache / cache) | Python imports |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bundle']} | {r['precision']} | {r['cold_c_cpu_s']:.3f} / {r['cold_c_cached_cpu_s']:.3f} | "
              f"{r['cold_python_cpu_s']:.3f} / {r['cold_python_cached_cpu_s']:.3f} | "
              f"{r['cold_python_ort_cpu_s']:.3f} / {r['cold_python_ort_cached_cpu_s']:.3f} | "
              f"{r['cold_python_imports_cpu_s']:.3f} |")


if __name__ == "__main__":
    main()
