"""Export: a training checkpoint -> a verified bundle (TorchScript, ONNX FP32/FP16/INT8, TensorRT).

``export_bundle`` (in :mod:`edgeseg.export.pipeline`) is the one entry point; the modules here
each do one step: trace and save TorchScript, export ONNX, convert to FP16, calibrate and
quantise to INT8, check every artifact against the FP32 PyTorch model, write the bundle.
Importing this package does not import torch.
"""

from __future__ import annotations


def export_bundle(*args, **kwargs):
    """Export a checkpoint to a verified bundle; see :func:`edgeseg.export.pipeline.export_bundle`."""
    from edgeseg.export.pipeline import export_bundle as run

    return run(*args, **kwargs)


__all__ = ["export_bundle"]
