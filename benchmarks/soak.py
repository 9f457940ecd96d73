"""Hours next to a scanner in minutes: does memory, and do descriptors, threads and work-folder
bytes, level off in `edgeseg serve`, `edgeseg listen` and libedgeseg?

Runs one target for ``--minutes`` of wall time, sending it the same round of work over and over,
and samples the process that does the work from ``/proc`` every ``--every`` requests (resident
set, its peak, anonymous memory, open descriptors, threads, bytes in its work folder):

- ``serve``: ``edgeseg serve`` on 127.0.0.1 with KServe v2 requests (JSON and binary tensors, the
  network and the pipeline model), ``/v1/segment`` uploads (NIfTI, gzip-encoded NIfTI, a DICOM
  slice, NPY) and bad requests (malformed JSON, a wrong datatype, a body over ``--max-body-mb``,
  a short binary tensor, an unknown model, an upload that is no image, a client gone mid-body);
  benchmarks/soak_serve.py.
- ``listen``: ``edgeseg listen`` with storescu sending the dcmqi series (tests/data) again and
  again, the same UIDs and fresh ones, plus a refused association (wrong called AE title), an
  echo, and a connection that sends bytes that are no PDU; benchmarks/soak_listen.py.
- ``capi``: libedgeseg through ctypes in a child process: one handle reused for
  ``es_segment_slice`` and refused calls, and an ``es_open`` / ``es_segment_slice`` /
  ``es_close`` cycle every round; benchmarks/soak_capi.py (needs ``make sdk``).

It prints a progress line per sample, and writes JSON (the samples; per quantity a straight line
fitted over the first and the last half of the run after its first tenth, in units per 1,000
requests; the answers' status counts) and a PNG of RSS, descriptors and threads against requests. A fixed plateau shows
as a last-half slope near 0; a leak as a last-half slope like the first half's.

    OMP_NUM_THREADS=1 nice python benchmarks/soak.py serve BUNDLE --minutes 25 --json s.json --png s.png
    OMP_NUM_THREADS=1 nice python benchmarks/soak.py listen BUNDLE --minutes 25 --json l.json --png l.png
    OMP_NUM_THREADS=1 nice python benchmarks/soak.py capi BUNDLE --lib build/sdk/lib/libedgeseg.so --minutes 25
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tree_rss import folder_bytes, process_sample  # noqa: E402

QUANTITIES = ("rss_kib", "anon_kib", "hwm_kib", "fds", "threads", "work_bytes")
WARM_UP = 0.1  # the fraction of the run's requests left out of the fits


def _slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares growth of a quantity per 1,000 requests over ``points`` (requests, value)."""
    if len(points) < 3:
        return None
    import numpy as np

    x = np.array([p[0] for p in points], float)
    y = np.array([p[1] for p in points], float)
    if np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, y, 1)[0] * 1000)


def growth(samples: list[dict]) -> dict:
    """Per quantity: the first, last and largest value, and the slope per 1,000 requests fitted
    over the first and the last half of the run (by requests) after its first tenth: the model's
    first calls, a work folder filling to its limit, are not growth."""
    end = samples[-1]["requests"]
    start, half = end * WARM_UP, end * (1 + WARM_UP) / 2
    fitted = {}
    for key in QUANTITIES:
        points = [(s["requests"], s[key]) for s in samples]
        first = _slope([p for p in points if start <= p[0] <= half])
        last = _slope([p for p in points if p[0] >= half])
        fitted[key] = {"start": points[0][1], "end": points[-1][1], "max": max(p[1] for p in points),
                       "per_1000_first_half": None if first is None else round(first, 2),
                       "per_1000_last_half": None if last is None else round(last, 2)}
    return fitted


def plot(result: dict, path: Path) -> None:
    """RSS (and anonymous memory), descriptors and threads, and work-folder bytes against requests."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    x = [s["requests"] for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(x, [s["rss_kib"] / 1024 for s in samples], label="RSS")
    axes[0].plot(x, [s["anon_kib"] / 1024 for s in samples], label="anonymous")
    axes[0].set_ylabel("MiB")
    axes[0].legend()
    axes[1].plot(x, [s["fds"] for s in samples], label="file descriptors")
    axes[1].plot(x, [s["threads"] for s in samples], label="threads")
    axes[1].legend()
    axes[2].plot(x, [s["work_bytes"] / 2**20 for s in samples], label="work folder")
    axes[2].set_ylabel("MiB")
    axes[2].set_xlabel("requests")
    axes[2].legend()
    fig.suptitle(f"{result['target']}: {result['requests']} requests in {result['wall_s'] / 60:.1f} min")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _driver(args, work: Path):
    if args.target == "serve":
        from soak_serve import ServeDriver
        return ServeDriver(args.bundle, work, args.server_env)
    if args.target == "listen":
        from soak_listen import ListenDriver
        return ListenDriver(args.bundle, work, args.server_env)
    from soak_capi import CapiDriver
    return CapiDriver(args.bundle, work, args.lib, args.server_env)


def soak(args) -> dict:
    """Run ``args.target`` for ``args.minutes``; the samples, fits and answer counts."""
    with tempfile.TemporaryDirectory(prefix=f"edgeseg-soak-{args.target}-") as tmp:
        work = Path(tmp)
        driver = _driver(args, work)
        statuses: collections.Counter = collections.Counter()
        samples, requests, next_sample = [], 0, 0
        started, date = time.monotonic(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
        try:
            statuses.update(driver.round())  # warm-up: the first round's allocations are not growth
            requests = next_sample = sum(statuses.values())
            while True:
                elapsed = time.monotonic() - started
                if requests >= next_sample:
                    sample = process_sample(driver.pid)
                    if sample is None:
                        raise SystemExit(f"{args.target}: the process ended after {requests} requests")
                    sample.update(requests=requests, seconds=round(elapsed, 1), work_bytes=folder_bytes(driver.work))
                    samples.append(sample)
                    next_sample += args.every
                    print(f"{args.target} {elapsed / 60:5.1f} min {requests:7d} requests  rss {sample['rss_kib'] / 1024:7.1f} MiB"
                          f"  anon {sample['anon_kib'] / 1024:7.1f}  fds {sample['fds']:4d}  threads {sample['threads']:3d}"
                          f"  work {sample['work_bytes'] / 2**20:6.2f} MiB", flush=True)
                if elapsed >= args.minutes * 60:
                    break
                time.sleep(args.pause)
                counts = driver.round()
                statuses.update(counts)
                requests += sum(counts.values())
        finally:
            extra = driver.close()
    return {"target": args.target, "command": " ".join(sys.argv), "started": date,
            "wall_s": round(time.monotonic() - started, 1), "requests": requests, "every": args.every,
            "pause_s": args.pause,
            "load_average": os.getloadavg(), "answers": dict(sorted(statuses.items())), **extra,
            "growth": growth(samples), "samples": samples}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("serve", "listen", "capi"))
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--minutes", type=float, default=25)
    parser.add_argument("--every", type=int, default=100, help="requests between samples")
    parser.add_argument("--pause", type=float, default=0.25, help="seconds between rounds (keeps the rate modest)")
    parser.add_argument("--lib", type=Path, default=Path("build/sdk/lib/libedgeseg.so"), help="libedgeseg (capi)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="set in the measured process's environment (e.g. MALLOC_ARENA_MAX=2)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args(argv)
    args.server_env = dict(item.split("=", 1) for item in args.server_env)
    result = soak(args)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.png:
        plot(result, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())

