"""Mistakes an application can make with edgeseg's API: ``mypy --strict`` must report each line
marked ``# error: CODE`` with that code (tests/test_typed_api.py), and nothing else. Were the
package's annotations to decay into Any, these calls would type-check and the test would fail.

Never run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgeseg.errors import DataError
from edgeseg.runtime import Segmenter, read_manifest
from edgeseg.runtime.readers import read_input
from edgeseg.serve.client import segment_remote


def mistakes(bundle: Path, hu: npt.NDArray[np.int16]) -> None:
    seg = Segmenter.load(bundle, threads="2")  # error: arg-type
    seg.predict("slice.png")  # error: arg-type
    seg.predict_volume(Path("ct.nii.gz"))  # error: arg-type
    seg.predict_volume(hu, spacing=(1.0, 1.0))  # error: arg-type
    logits: npt.NDArray[np.uint8] = seg.infer(hu.astype(np.float32))  # error: assignment
    labels: npt.NDArray[np.float32] = seg.predict(hu)  # error: assignment
    seg.mask  # error: attr-defined
    seg.describe()["backend"] + 1  # error: operator
    seg.manifest.labels  # error: union-attr
    volume, _ = read_input(Path("ct.nii.gz"))
    volume.hu_values  # error: attr-defined
    read_manifest(bundle).labels["liver"]  # error: index
    segment_remote("http://127.0.0.1:8000/models/edgeseg", bundle)  # error: call-arg
    closed = seg.close()  # error: func-returns-value
    DataError("refused").package  # error: attr-defined
    print(logits, labels, closed)
