"""TorchScript artifact: the eval-mode model traced, frozen, and saved with its spec and labels."""

from __future__ import annotations

import io
import json
from pathlib import Path

from edgeseg.spec import PreprocessSpec

SPEC_FILE = "spec.json"
LABELS_FILE = "labels.json"


def export_torchscript(model, example, spec: PreprocessSpec, labels: dict[int, str], path: str | Path) -> None:
    """Trace ``model`` on ``example`` (N, C, H, W float32), freeze it, and save it to ``path``.

    Freezing inlines the weights and folds batch norm into the convolutions. We do not apply
    ``torch.jit.optimize_for_inference``: it rewrites convolutions into MKL-DNN ops bound to
    the exporting CPU, so the file would no longer run on CUDA, and the runtime may use either.
    The spec (canonical JSON) and labels travel in the archive's extra files ``spec.json`` and
    ``labels.json``, so the file alone says how its input must be prepared.
    """
    import torch

    model = model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.freeze(traced)
    extra = {SPEC_FILE: spec.to_json(), LABELS_FILE: json.dumps({str(k): v for k, v in sorted(labels.items())})}
    # In memory first, then a plain write: torch's file writer aborts the process on a full disk
    # (a C++ exception through its destructor), where a write raises OSError, one line in the CLI.
    buffer = io.BytesIO()
    torch.jit.save(frozen, buffer, _extra_files=extra)
    Path(path).write_bytes(buffer.getbuffer())


def load_torchscript(path: str | Path):
    """Load a TorchScript artifact on CPU; returns (module, spec, labels) from its extra files."""
    import torch

    extra = {SPEC_FILE: "", LABELS_FILE: ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    spec = PreprocessSpec.from_json(extra[SPEC_FILE])
    labels = {int(k): v for k, v in json.loads(extra[LABELS_FILE]).items()}
    return module, spec, labels
