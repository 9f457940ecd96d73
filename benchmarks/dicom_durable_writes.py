"""What writing each received image durably (``edgeseg listen --work``) costs the DICOM node.

Stores one CT slice of the dcmqi test series ``--images`` times, each under a new SOP Instance UID,
into a series folder under ``--folder`` (default: a temporary folder in the current one; the disk
the work folder would be on is what counts), the way the node stores an image before it answers
Success (edgeseg.serve.dicom_series.HeldSeries.keep): once as a folder under TMPDIR is written
(staged name, rename), once as a --work folder is (the file and the folder also flushed with
fsync). The two alternate image by image, so both meet the same disk and load. Prints the
median and mean milliseconds per image of each, and the difference.

    python benchmarks/dicom_durable_writes.py --images 200

With ``--senders N`` it measures a running node instead (edgeseg.serve.dicom_node.DicomNode, no
model: nothing is segmented): N dcmtk ``storescu`` processes at once, each sending ``--images``
images of a series of its own into a --work folder under ``--folder``; prints the wall time until
all are acknowledged and the images acknowledged per second.

    python benchmarks/dicom_durable_writes.py --images 100 --senders 2
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

SLICE = Path(__file__).parents[1] / "tests" / "data" / "dcmqi_ct_liver" / "ct-3slice"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--folder", default=".")
    parser.add_argument("--senders", type=int, default=0)
    args = parser.parse_args()
    if args.senders:
        print(json.dumps(senders(args.images, args.senders, args.folder), indent=1))
        return

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


def senders(images: int, count: int, folder: str) -> dict:
    """``count`` storescu processes sending ``images`` images each (a series each) to a node at once."""
    import pydicom
    from pydicom.uid import generate_uid

    from edgeseg.serve.dicom_node import DicomNode

    with tempfile.TemporaryDirectory(prefix="durable-senders-", dir=folder) as root:
        ds, batches = pydicom.dcmread(sorted(SLICE.glob("*.dcm"))[0]), []
        for n in range(count):
            ds.SeriesInstanceUID, batch = generate_uid(), Path(root) / f"sender-{n}"
            batch.mkdir()
            for i in range(images):
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.save_as(batch / f"{i:05d}.dcm")
            batches.append(sorted(map(str, batch.iterdir())))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        node = DicomNode(None, port=port, out=Path(root) / "out", idle=3600, work=Path(root) / "work", durable=True,
                         max_series=count)
        node.start()
        try:
            done: list[int] = []
            runs = [threading.Thread(target=lambda b=b: done.append(subprocess.run(
                ["storescu", "-aec", "EDGESEG", "127.0.0.1", str(port), *b], capture_output=True).returncode))
                for b in batches]
            began = time.perf_counter()
            for run in runs:
                run.start()
            for run in runs:
                run.join()
            wall = time.perf_counter() - began
        finally:
            node.abandon()
            node.stop()
    return {"senders": count, "images_each": images, "acknowledged": node.stats.received, "storescu_rc": done,
            "wall_s": round(wall, 3), "images_per_s": round(node.stats.received / wall, 1)}


if __name__ == "__main__":
    main()
