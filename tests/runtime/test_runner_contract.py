"""Every runner that can load one of the bundle's artifacts here passes the same cases.

The reference is ONNX Runtime on the FP32 artifact; FP32 runners must match it to float
rounding, INT8 ones must give the same labels on nearly all pixels of real (phantom) slices.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edgeseg.errors import BackendError, DataError
from edgeseg.kernels import preprocess
from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.runners import RUNNERS
from edgeseg.runtime.selection import LIBRARY, RUNNERS_FOR_FORMAT, Candidate, instantiate

from .conftest import bundle_factory

# (runner, precision) pairs the fixture bundle offers (it has no FP16 graph and no engine).
PAIRS = [(runner, precision) for fmt, precision in (("onnx", "fp32"), ("onnx", "int8"), ("torchscript", "fp32"))
         for runner in RUNNERS_FOR_FORMAT[fmt]]
INT8_MIN_AGREEMENT = 0.97


def _load(bundle_dir, runner: str, precision: str):
    if importlib.util.find_spec(LIBRARY[runner]) is None:
        pytest.skip(f"{runner} is not installed ({LIBRARY[runner]} missing)")
    manifest = read_manifest(bundle_dir)
    fmt = next(f for f, names in RUNNERS_FOR_FORMAT.items() if runner in names)
    entry = manifest.artifact(fmt, precision)
    try:
        return instantiate(bundle_dir, manifest, Candidate(runner, entry), threads=1)
    except BackendError as exc:
        if runner == "onnxruntime-gpu":
            pytest.skip(f"no GPU execution provider here: {exc}")
        raise


@pytest.fixture(scope="module")
def slices(bundle_dir) -> np.ndarray:
    manifest = read_manifest(bundle_dir)
    hu, _ = bundle_factory.phantom_slices(manifest.spec.size[0], cases=1, slices=manifest.max_batch, seed=7)
    return preprocess(hu, manifest.spec)


@pytest.fixture(scope="module")
def reference(bundle_dir, slices) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": slices})[0]


def test_reference_matches_torch(bundle_dir, slices, reference):
    torch = pytest.importorskip("torch")
    module = torch.jit.load(str(bundle_dir / "model.ts"))
    with torch.inference_mode():
        eager = module(torch.from_numpy(slices)).numpy()
    np.testing.assert_allclose(reference, eager, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("runner", "precision"), PAIRS, ids=[f"{r}-{p}" for r, p in PAIRS])
def test_runner_matches_reference_at_batch_1_and_n(bundle_dir, slices, reference, runner, precision):
    with _load(bundle_dir, runner, precision) as model:
        batched = model.infer(slices)
        singles = np.concatenate([model.infer(slices[i:i + 1]) for i in range(len(slices))])
        assert batched.dtype == np.float32 and batched.shape == reference.shape
        np.testing.assert_allclose(batched, singles, atol=1e-4, rtol=1e-4)
        if precision == "fp32":
            np.testing.assert_allclose(batched, reference, atol=1e-4, rtol=1e-4)
        else:
            agreement = float(np.mean(batched.argmax(1) == reference.argmax(1)))
            assert agreement >= INT8_MIN_AGREEMENT, f"{runner} int8 labels agree on {agreement:.3f} of pixels"
        description = model.describe()
        assert (description["backend"], description["precision"]) == (runner, precision)


@pytest.mark.parametrize(("runner", "precision"), PAIRS, ids=[f"{r}-{p}" for r, p in PAIRS])
def test_runner_rejects_what_the_artifact_cannot_take(bundle_dir, slices, runner, precision):
    with _load(bundle_dir, runner, precision) as model:
        with pytest.raises(DataError, match="dtype must be float32"):
            model.infer(slices.astype(np.float64))
        with pytest.raises(DataError, match="axis 3"):
            model.infer(np.zeros((1, 1, slices.shape[2], slices.shape[3] + 1), np.float32))
        with pytest.raises(DataError, match="4 dimensions"):
            model.infer(slices[0])
        with pytest.raises(DataError, match="outside 1..8"):
            model.infer(np.concatenate([slices, slices[:1]]))
        bad = slices[:1].copy()
        bad[0, 0, 3, 3] = np.nan
        with pytest.raises(DataError, match="NaN"):
            model.infer(bad)


def test_every_registered_runner_is_covered():
    assert {runner for runner, _ in PAIRS} | {"tensorrt"} == set(RUNNERS)
