"""The round of associations benchmarks/soak.py sends `edgeseg listen`, over and over.

Each round, with dcmtk's tools: storescu sends the dcmqi series (tests/data, 3 slices of 512 x 512)
with its own UIDs (after the first round the node takes it for late images of a series it has
segmented, and replaces its SEG) and once more with fresh study, series and instance UIDs (a new
series); echoscu asks for an association with a called AE title the node refuses, and for an
echo; and a TCP connection sends bytes that are no PDU. Each association or connection counts as
one request, by outcome.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from serve_upload_rss import _free_port

ROOT = Path(__file__).resolve().parents[1]
SERIES = ROOT / "tests" / "data" / "dcmqi_ct_liver" / "ct-3slice"
IDLE_S = 1


class ListenDriver:
    """``edgeseg listen BUNDLE`` in a child process (ONNX Runtime FP32, one thread), its work
    folder (``TMPDIR``) under ``work``; ``round()`` sends one round and returns outcome counts."""

    def __init__(self, bundle: Path, work: Path, env: dict[str, str]):
        for tool in ("storescu", "echoscu"):
            if shutil.which(tool) is None:
                raise SystemExit(f"{tool} (dcmtk) is not installed")
        self.work, self.out, self.files = work / "tmp", work / "out", work / "files"
        for folder in (self.work, self.out, self.files):
            folder.mkdir()
        self.port = _free_port()
        command = [sys.executable, "-m", "edgeseg.cli", "listen", str(bundle), "--port", str(self.port),
                   "--out", str(self.out), "--idle", str(IDLE_S), "--backend", "onnxruntime:fp32", "--threads", "1"]
        self.node = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(work / "listen.log", "wb"),
                                     env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(self.work), **env})
        self.pid = self.node.pid
        deadline = time.monotonic() + 180
        while self._echo("EDGESEG") != "echo":
            if self.node.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("edgeseg listen did not start")
            time.sleep(0.5)
        import pydicom

        self.datasets = [pydicom.dcmread(path) for path in sorted(SERIES.glob("*.dcm"))]
        self.rounds = 0

    def _echo(self, called: str) -> str:
        done = subprocess.run(["echoscu", "-to", "10", "-aec", called, "127.0.0.1", str(self.port)],
                              capture_output=True, timeout=60)
        return "echo" if done.returncode == 0 else ("refused" if called != "EDGESEG" else "echo-failed")

    def _store(self, folder: Path) -> str:
        done = subprocess.run(["storescu", "-to", "30", "-aec", "EDGESEG", "127.0.0.1", str(self.port),
                               *map(str, sorted(folder.glob("*.dcm")))], capture_output=True, timeout=120)
        return "stored" if done.returncode == 0 else "store-failed"

    def _fresh_copy(self) -> Path:
        """The series with new study, series and instance UIDs, as a scanner's next series."""
        from pydicom.uid import generate_uid

        folder = self.files / f"round-{self.rounds % 2}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        study, series = generate_uid(), generate_uid()
        for index, ds in enumerate(self.datasets):
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(folder / f"{index:02d}.dcm")
        return folder

    def _not_a_pdu(self) -> str:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            with contextlib.suppress(OSError):  # the node answers, or closes the connection
                sock.recv(100)
        return "not-a-pdu"

    def round(self) -> collections.Counter:
        self.rounds += 1
        counts = collections.Counter([self._store(SERIES), self._store(self._fresh_copy()), self._echo("NOTEDGESEG"),
                                      self._echo("EDGESEG"), self._not_a_pdu()])
        time.sleep(IDLE_S / 2)
        return counts

    def close(self) -> dict:
        self.node.terminate()
        status = self.node.wait(timeout=120)
        segs = [p for p in self.out.rglob("*") if p.is_file()]
        return {"exit_status": status, "seg_files": len(segs), "out_bytes": sum(p.stat().st_size for p in segs)}
