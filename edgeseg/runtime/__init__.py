"""The torch-free runtime: bundle loading, runners and the segmenter that drives them.

Nothing under ``edgeseg.runtime`` imports torch; optional backends (OpenVINO, TensorRT,
TorchScript) are imported inside the runner that needs them.
"""

from __future__ import annotations

from edgeseg.runtime.manifest import (
    MANIFEST_NAME,
    PARITY_NAME,
    SCHEMA_VERSION,
    ArtifactEntry,
    Manifest,
    TensorInfo,
    read_manifest,
    sha256_file,
    verify_artifacts,
)
from edgeseg.runtime.segmenter import Segmenter

__all__ = [
    "Segmenter",
    "MANIFEST_NAME",
    "PARITY_NAME",
    "SCHEMA_VERSION",
    "ArtifactEntry",
    "Manifest",
    "TensorInfo",
    "read_manifest",
    "sha256_file",
    "verify_artifacts",
]
