"""What writing each received image durably (``edgeseg listen --work``) costs the DICOM node.

Stores one CT slice of the dcmqi test series ``--images`` times, each under a new SOP Instance UID,
into a series folder under ``--folder`` (default: a temporary folder in the current one; the disk
the work folder would be on is what counts), the way the node stores an image before it answers
Success (edgeseg.serve.dicom_series.HeldSeries.keep): once as a folder under TMPDIR is written
(staged name, rename), once as a --work folder is (the file and the folder also flushed with
fsync). The two alternate image by image, so both meet the same disk and load. Prints the
median and mean milliseconds per image of each, and the difference.

    python benchmarks/dicom_durable_writes.py --images 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

SLICE = Path(__file__).parents[1] / "tests" / "data" / "dcmqi_ct_liver" / "ct-3slice"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--folder", default=".")
    args = parser.parse_args()

    import pydicom
    from pydicom.uid import generate_uid

    from edgeseg.serve.dicom_series import HeldSeries

    ds = pydicom.dcmread(sorted(SLICE.glob("*.dcm"))[0])
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="durable-writes-", dir=args.folder) as root:
        held = {durable: HeldSeries(Path(root) / ("durable" if durable else "plain"), 0.0, durable=durable)
                for durable in (False, True)}
        for n in range(args.images):
            for durable in ((False, True) if n % 2 else (True, False)):
                sop = generate_uid()
                ds.SOPInstanceUID = sop
                ds.file_meta.MediaStorageSOPInstanceUID = sop
                began = time.perf_counter()
                held[durable].keep(sop, ds, 1)
                times[durable].append((time.perf_counter() - began) * 1e3)
    report = {("durable" if durable else "plain"): {"median_ms": round(statistics.median(ms), 3),
                                                     "mean_ms": round(statistics.mean(ms), 3)}
              for durable, ms in times.items()}
    report["fsync_cost_median_ms"] = round(report["durable"]["median_ms"] - report["plain"]["median_ms"], 3)
    report["image_bytes"] = next(iter(held[True].sizes.values()))
    report["images"] = args.images
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
