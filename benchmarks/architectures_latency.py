"""End-to-end latency of several bundles measured in one run, interleaved, so ratios are fair.

Each bundle is loaded with every backend asked for; one batch-1 ``Segmenter.predict`` of a
512x512 int16 slice per bundle and backend is timed in turn, round after round, so load changes
on a shared machine hit all of them alike. Prints p50 ms and the ratio to the first bundle.

    python benchmarks/architectures_latency.py BUNDLE... [--backend auto --backend openvino:int8]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from edgeseg.bench.runtime import ct_slices, time_interleaved
from edgeseg.errors import EdgesegError
from edgeseg.runtime.segmenter import Segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--backend", action="append", dest="backends")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    hu = ct_slices(1, args.size)[0]
    segs, fns = {}, {}
    for bundle in args.bundles:
        for backend in args.backends or ["auto"]:
            key = f"{bundle} [{backend}]"
            try:
                segs[key] = Segmenter.load(bundle, backend=backend, threads=args.threads)
            except EdgesegError as exc:
                print(f"{key}: {exc}")
                continue
            fns[key] = (lambda seg=segs[key]: seg.predict(hu))
    samples = time_interleaved(fns, args.runs, args.warmup)
    first = {}
    rows = []
    for key, times in samples.items():
        p50 = float(np.median(times)) * 1e3
        backend = key.rsplit("[", 1)[1].rstrip("]")
        first.setdefault(backend, p50)
        rows.append({"bundle": key.rsplit(" [", 1)[0], "asked": backend, "chosen": segs[key].backend, "p50_ms": round(p50, 2),
                     "vs_first": round(first[backend] / p50, 2)})
        print(f"{key:<70} -> {segs[key].backend:<18} {p50:8.2f} ms  {first[backend] / p50:5.2f}x vs first")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
