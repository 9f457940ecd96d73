"""An application using edgeseg's torch-free API as docs/runtime.md and docs/serving.md show it.

Never run: tests/test_typed_api.py type-checks it with ``mypy --strict`` against the installed
package, which must find every name here and type each call without a single error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgeseg import PreprocessSpec, __version__
from edgeseg.errors import BackendError, BundleError, DataError, EdgesegError
from edgeseg.runtime import Manifest, Segmenter, read_manifest, verify_artifacts
from edgeseg.runtime.readers import read_input
from edgeseg.serve.client import remote_segmenter, segment_remote

log = logging.getLogger("scanner-app")


def segment_file(bundle: Path, series: Path) -> npt.NDArray[np.uint8] | None:
    """Read a series, segment it, and return the label map; None (logged) where edgeseg refuses."""
    try:
        with Segmenter.load(bundle, backend=["openvino:int8", "onnxruntime"], threads=2, fov_check="warn") as seg:
            volume, refs = read_input(series)
            if refs is not None:
                log.info("series %s", refs)
            labels: npt.NDArray[np.uint8] = seg.predict_volume(volume, batch_size=4, progress=False)
            return labels
    except (DataError, BundleError, BackendError) as exc:
        log.error("edgeseg %s refused %s: %s", __version__, series, exc)
        return None


def segment_slice(seg: Segmenter, slice_hu: npt.NDArray[np.int16]) -> dict[str, int]:
    """Voxels per class name of one slice, and the model's raw logits beside it."""
    mask: npt.NDArray[np.uint8] = seg.predict(slice_hu)
    stack = seg.predict_volume(np.stack([slice_hu, slice_hu]), spacing=(2.5, 0.7, 0.7))
    spec: PreprocessSpec = seg.spec
    batch = np.zeros((1, 1, *spec.size), dtype=np.float32)
    logits: npt.NDArray[np.float32] = seg.infer(batch)
    assert logits.ndim == 4 and stack.dtype == np.uint8
    described: dict[str, str] = seg.describe()
    log.info("backend %s (%s)", seg.backend, described.get("device", "?"))
    return {name: int(np.count_nonzero(mask == number)) for number, name in seg.labels.items()}


def check_bundle(bundle: str) -> int:
    """The bundle's class count, after checking every artifact's sha256."""
    manifest: Manifest = read_manifest(bundle)
    verify_artifacts(bundle, manifest)
    window: tuple[float, float] = manifest.spec.window
    log.info("window %s, max batch %d", window, manifest.max_batch)
    return manifest.num_classes


def remote(url: str, bundle: Path, hu: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """The network on a KServe v2 server, pre- and post-processing here."""
    with remote_segmenter(url, bundle, timeout=10.0) as seg:
        first = seg.predict(hu[0])
    try:
        return segment_remote(url, bundle, hu, batch_size=4) | first
    except EdgesegError as exc:
        raise SystemExit(str(exc)) from None
