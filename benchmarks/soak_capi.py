"""The round of calls benchmarks/soak.py makes into libedgeseg, over and over.

A child process (this file with ``--child``) loads libedgeseg with ctypes and opens one handle it
keeps. Each round, asked for on its stdin: ten ``es_segment_slice`` calls on the kept handle (the
dcmqi series' slices, int16, 512 x 512), two calls it refuses (a slice holding NaN, a slice
over ES_MAX_SIDE), and one ``es_open`` / ``es_segment_slice`` / ``es_close`` cycle. The child
answers each round with its count of calls; the parent samples the child from /proc.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from capi_report import EsError, load_library

ROOT = Path(__file__).resolve().parents[1]
SERIES = ROOT / "tests" / "data" / "dcmqi_ct_liver" / "ct-3slice"
ES_INT16, ES_FLOAT32 = 1, 3


def _child(lib_path: Path, bundle: Path) -> None:
    from edgeseg.data.dicom import read_dicom_series_with_refs

    lib = load_library(lib_path.parent)  # the folder of libedgeseg.so
    hu = np.ascontiguousarray(np.round(np.asarray(read_dicom_series_with_refs(SERIES)[0].hu)).astype(np.int16))
    nan = np.full((64, 64), np.nan, np.float32)
    huge = np.zeros((8193, 2), np.int16)
    labels = np.zeros(hu.shape[1:], np.uint8)
    err = EsError()

    def open_() -> int:
        handle = lib.es_open(str(bundle).encode(), b"fp32", 1, ctypes.byref(err))
        if not handle:
            raise SystemExit(f"es_open: {err.message.decode()}")
        return handle

    def segment(handle: int, image: np.ndarray, dtype: int) -> int:
        out = labels if image.shape == labels.shape else np.zeros(image.shape, np.uint8)
        return lib.es_segment_slice(handle, image.ctypes.data, dtype, image.shape[0], image.shape[1],
                                    image.shape[1], out.ctypes.data, ctypes.byref(err))

    kept = open_()
    for _ in sys.stdin:
        counts = collections.Counter()
        for i in range(10):
            counts[f"slice {segment(kept, hu[i % len(hu)], ES_INT16)}"] += 1
        counts[f"nan {segment(kept, nan, ES_FLOAT32)}"] += 1
        counts[f"too-large {segment(kept, huge, ES_INT16)}"] += 1
        cycle = open_()
        counts[f"cycle {segment(cycle, hu[0], ES_INT16)}"] += 1
        lib.es_close(cycle)
        print(" ".join(f"{key.replace(' ', '=')}:{n}" for key, n in counts.items()), flush=True)
    lib.es_close(kept)


class CapiDriver:
    """The child process above; ``round()`` asks it for one round and returns its call counts
    (by what was called and its return code)."""

    def __init__(self, bundle: Path, work: Path, lib: Path, env: dict[str, str]):
        if not lib.is_file():
            raise SystemExit(f"{lib} does not exist: build it with `make sdk`")
        self.work = work / "cache"  # OpenVINO's compiled-model cache of the child
        self.child = subprocess.Popen([sys.executable, __file__, "--child", str(lib.resolve()), str(bundle.resolve())],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": "1", "EDGESEG_CACHE_DIR": str(self.work), **env})
        self.pid = self.child.pid

    def round(self) -> collections.Counter:
        self.child.stdin.write("round\n")
        self.child.stdin.flush()
        line = self.child.stdout.readline()
        if not line:
            raise SystemExit(f"the libedgeseg child ended (exit status {self.child.wait()})")
        return collections.Counter({key: int(n) for key, n in (item.rsplit(":", 1) for item in line.split())})

    def close(self) -> dict:
        self.child.stdin.close()
        return {"exit_status": self.child.wait(timeout=120)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, type=Path, required=True, metavar=("LIB", "BUNDLE"))
    _child(*parser.parse_args().child)
