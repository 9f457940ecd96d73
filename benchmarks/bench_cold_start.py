"""Cold start: a new process from its start to its first mask, with and without the compiled-model cache.

    python benchmarks/bench_cold_start.py [--bundle NAME=DIR ...] [--runs 7] [--threads N] [--json OUT]

For each bundle, on one 512x512 int16 phantom slice, interleaved runs of:

- ``c auto``: a C program (benchmarks/capi/bench_capi.c ``cold``) that calls ``es_open_cached``
  with precision ``auto`` (the bundle's INT8 artifact on OpenVINO), one ``es_segment_slice``, exit;
- ``python auto``: ``python -c "Segmenter.load(bundle, backend='auto').predict(hu)"``; without
  a cache this includes the backend probe ``auto`` runs once per machine;
- ``python onnxruntime:fp32``: the same with ONNX Runtime on the FP32 artifact;
- ``python imports``: numpy, openvino, onnxruntime and edgeseg.runtime alone, for reference.

*No cache* is a fresh, empty ``$EDGESEG_CACHE_DIR`` (or cache folder, for C) per run; *cache* one
filled by an earlier run (OpenVINO's compiled blob, ONNX Runtime's optimised graph, the probe's
choice). Reported: medians of wall time, CPU time (user + system; a busy machine changes it
far less than the wall time) and peak resident memory, and the 1-minute load average before and
after each bundle, so figures taken on a busy machine say so. Without ``--bundle`` the bundles
are made by benchmarks/random_bundle.py (random weights; cold start does not depend on them):
``demo`` (128x128, base 16, depth 4) and ``unet256`` (256x256, base 32, depth 4, the default model).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capi_report import PY_IMPORTS, ROOT, SIDE, build, make_bundles, timed_process  # noqa: E402

PY_FIRST_MASK = ("import sys, numpy as np\n"
                 "from edgeseg.runtime import Segmenter\n"
                 "hu = np.fromfile(sys.argv[1], dtype='<i2').reshape({side}, {side})\n"
                 "seg = Segmenter.load(sys.argv[2], backend=sys.argv[3], threads=int(sys.argv[4]))\n"
                 "seg.predict(hu)\n"
                 "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).replace('VmHWM:', 'vmhwm_kb').replace('kB', ''))\n"
                 "print('backend', seg.backend)\n")


def ways_to_start(exe: Path, bundle: Path, raw: Path, threads: int, tmp: Path) -> dict[str, object]:
    """name -> function(run index, cached) -> (argv, env) of one cold process."""
    base = dict(os.environ, PYTHONPATH=str(ROOT))
    warm = tmp / f"warm-{bundle.name}"

    def cache_env(name: str, i: int, cached: bool) -> Path:
        return warm if cached else tmp / f"fresh-{bundle.name}-{name}-{i}"

    def c_auto(i: int, cached: bool):
        folder = cache_env("c", i, cached) / "openvino"
        return [str(exe), "cold", str(bundle), "auto", str(raw), str(SIDE), str(SIDE), str(folder), str(threads)], base

    def python(backend: str):
        def start(i: int, cached: bool):
            argv = [sys.executable, "-c", PY_FIRST_MASK.format(side=SIDE), str(raw), str(bundle), backend, str(threads)]
            return argv, dict(base, EDGESEG_CACHE_DIR=str(cache_env(backend.replace(":", "-"), i, cached)))
        return start

    return {"c auto": c_auto, "python auto": python("auto"), "python onnxruntime:fp32": python("onnxruntime:fp32"),
            "python imports": lambda i, cached: ([sys.executable, "-c", PY_IMPORTS], base)}


def measure(exe: Path, bundle: Path, raw: Path, runs: int, threads: int, tmp: Path) -> list[dict]:
    """Median wall s, CPU s and peak RSS MiB of each way of starting, without and with the cache."""
    ways = ways_to_start(exe, bundle, raw, threads, tmp)
    for name, start in ways.items():  # fill the warm cache once per way
        timed_process(*start(0, True))
    samples: dict[tuple[str, bool], list[tuple[float, float, float]]] = {}
    for i in range(runs):
        for name, start in ways.items():
            for cached in ((False,) if name == "python imports" else (False, True)):
                samples.setdefault((name, cached), []).append(timed_process(*start(i, cached)))
    return [{"start": name, "cache": cached, "runs": len(v), "wall_s": statistics.median(s[0] for s in v),
             "cpu_s": statistics.median(s[1] for s in v), "rss_mib": statistics.median(s[2] for s in v)}
            for (name, cached), v in samples.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", default=[], help="NAME=DIR (repeatable)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="OpenVINO / ONNX Runtime threads (0: their default)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from edgeseg.data.phantom import synth_phantom

    # Bytecode as an installed wheel has it (pip compiles it at install): without it every cold
    # Python process would compile edgeseg's modules first (PYTHONDONTWRITEBYTECODE, read-only trees).
    compileall.compile_dir(str(ROOT / "edgeseg"), quiet=1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cold-start-") as name:
        tmp = Path(name)
        exe = build(tmp)
        bundles = dict(b.split("=", 1) for b in args.bundle) if args.bundle else make_bundles(tmp)
        hu = np.round(synth_phantom("bench", 0, shape=(1, SIDE, SIDE)).hu[0]).astype(np.int16)
        raw = tmp / "slice.raw"
        hu.astype("<i2").tofile(raw)
        for label, bundle in bundles.items():
            load_before = os.getloadavg()[0]
            results = measure(exe, Path(bundle), raw, args.runs, args.threads, tmp)
            load_after = os.getloadavg()[0]
            for r in results:
                rows.append({"bundle": label, **r, "load_before": load_before, "load_after": load_after,
                             "cpus": os.cpu_count()})
                print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def print_table(rows: list[dict]) -> None:
    print("\n| bundle | start | cache | wall s (median) | CPU s | peak RSS MiB | load (1 min) before / after | cores |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        busy = " (busy)" if max(r["load_before"], r["load_after"]) > 0.5 * r["cpus"] else ""
        print(f"| {r['bundle']} | {r['start']} | {'yes' if r['cache'] else 'no'} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} | "
              f"{r['rss_mib']:.0f} | {r['load_before']:.1f} / {r['load_after']:.1f}{busy} | {r['cpus']} |")


if __name__ == "__main__":
    main()
