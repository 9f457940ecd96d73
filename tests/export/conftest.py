"""A tiny U-Net trained on phantom CT (so its masks are real, not noise) and its exported bundle."""

from pathlib import Path

import numpy as np
import pytest

CALIB_DATA = "phantom:cases=3,size=64,slices=16,seed=5"


@pytest.fixture(scope="session")
def checkpoint(trained_checkpoint) -> Path:
    """The suite's trained test checkpoint (tests/conftest.py): exporting it is what these tests
    check, so they share it instead of training one of their own."""
    return trained_checkpoint


@pytest.fixture(scope="session")
def eager(checkpoint):
    """The checkpoint's model in eval mode: the oracle every artifact is compared with."""
    from edgeseg.models.checkpoint import load_model

    model, payload = load_model(checkpoint)
    return model, payload


@pytest.fixture(scope="session")
def slices(eager) -> np.ndarray:
    """Real held-out model input: the checkpoint's validation case, pre-processed by its spec."""
    from edgeseg.export.verify import load_verify_set
    from edgeseg.models.checkpoint import checkpoint_spec

    _, payload = eager
    return load_verify_set(payload, checkpoint_spec(payload), None, 16).images


@pytest.fixture(scope="session")
def reference(eager, slices) -> np.ndarray:
    """FP32 eager logits of ``slices``."""
    import torch

    with torch.no_grad():
        return eager[0](torch.from_numpy(np.ascontiguousarray(slices))).numpy()


@pytest.fixture(scope="session")
def bundle(checkpoint, tmp_path_factory):
    """A bundle with every format the CPU can check: TorchScript, ONNX FP32, FP16, INT8."""
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings

    root = tmp_path_factory.mktemp("export")
    settings = ExportSettings(fp16=True, int8=True, calib_slices=32, max_batch=4)
    result = export_bundle(checkpoint, root / "bundle", settings, calib=CALIB_DATA, cache_dir=root / "cache",
                           progress=False, echo=lambda text: None)
    return result
