"""Peak memory and time of reading one CT volume as an Enhanced CT file and as its single-frame
series (docs/results.md, "Reading an Enhanced CT file").

Builds FRAMES slices of 512 x 512 from the three dcmqi slices (tests/data, repeated, 1 mm apart),
writes them as a single-frame series and as one Enhanced CT file (tests/enhanced_ct.py, frames in
stored order), then reads each with ``read_dicom_series_with_refs`` in a fresh process and prints
its peak RSS (``VmHWM``: ``ru_maxrss`` would carry the parent's over) and wall time; the bare
import is printed as the baseline.

    OMP_NUM_THREADS=1 nice python benchmarks/enhanced_ct_memory.py --frames 300 --out /tmp/ect-bench
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READ = """
import re, sys, time
from pathlib import Path
from edgeseg.data.dicom import read_dicom_series_with_refs
start = time.perf_counter()
if sys.argv[1] != "-":
    volume = read_dicom_series_with_refs(sys.argv[1])[0]
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(f"{sys.argv[1]}: {time.perf_counter() - start:.2f} s, peak RSS {peak / 1024:.0f} MiB")
"""


def build(frames: int, out: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT))
    from pydicom.uid import generate_uid

    from tests.enhanced_ct import read_slices, write_enhanced_ct

    base = read_slices(ROOT / "tests" / "data" / "dcmqi_ct_liver" / "ct-3slice")
    slices = []
    for k in range(frames):
        ds = copy.deepcopy(base[k % 3])
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, -126.69 - k]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        slices.append(ds)
    series = out / "series"
    series.mkdir(parents=True, exist_ok=True)
    for k, ds in enumerate(slices):
        ds.save_as(series / f"{k:04d}.dcm")
    return write_enhanced_ct(slices, out / "enhanced" / "e.dcm"), series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    enhanced, series = build(args.frames, args.out)
    for source in ("-", enhanced, series):
        subprocess.run([sys.executable, "-c", READ, str(source)], check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
