"""The torch-free runtime: bundle loading, runners and the segmenter that drives them.

Nothing under ``edgeseg.runtime`` imports torch; optional backends (OpenVINO, TensorRT,
TorchScript) are imported inside the runner that needs them.
"""

from __future__ import annotations

from edgeseg.runtime.bundle_files import sha256_file
from edgeseg.runtime.manifest import (
    MANIFEST_NAME,
    PARITY_NAME,
    SCHEMA_VERSION,
    Manifest,
    read_manifest,
    verify_artifacts,
)
from edgeseg.runtime.manifest_entries import ArtifactEntry, TensorInfo
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
