"""Every runner that can load one of the bundle's artifacts here passes the same cases.

The reference is ONNX Runtime on the FP32 artifact; FP32 runners must match it to float
rounding, INT8 ones must give the same labels on nearly all pixels of real (phantom) slices.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.errors import BackendError, DataError
from edgeseg.kernels import preprocess
from edgeseg.runtime.manifest import read_manifest
from edgeseg.data.phantom import synth_phantom
from edgeseg.runtime.runners import runner_class, runners, runners_for
from edgeseg.runtime.selection import Candidate, instantiate

# (runner, precision) pairs the test bundle offers (it has no FP16 graph and no engine).
PAIRS = [(cls.name, precision) for fmt, precision in (("onnx", "fp32"), ("onnx", "int8"), ("torchscript", "fp32"))
         for cls in runners_for(fmt, precision)]
INT8_MIN_AGREEMENT = 0.97


def _load(bundle_dir, runner: str, precision: str):
    cls = runner_class(runner)
    if not cls.available() and runner != "onnxruntime-gpu":
        pytest.skip(f"{runner} is not installed ({cls.library} missing: pip install 'edgeseg[{cls.extra}]')")
    manifest = read_manifest(bundle_dir)
    entry = manifest.artifact(cls.format, precision)
    try:
        return instantiate(bundle_dir, manifest, Candidate(runner, entry), threads=1)
    except BackendError as exc:
        if runner == "onnxruntime-gpu":
            pytest.skip(f"no GPU execution provider here: {exc}")
        raise


@pytest.fixture(scope="module")
def slices(bundle_dir) -> np.ndarray:
    manifest = read_manifest(bundle_dir)
    size = manifest.spec.size[0]
    return preprocess(synth_phantom("case_000", 7, shape=(manifest.max_batch, size, size)).hu, manifest.spec)


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
        elif runner not in model.entry.excluded:  # the gate measured and excluded the others already
            agreement = float(np.mean(batched.argmax(1) == reference.argmax(1)))
            assert agreement >= INT8_MIN_AGREEMENT, f"{runner} int8 labels agree on {agreement:.3f} of pixels"
        description = model.describe()
        assert (description["backend"], description["precision"]) == (runner, precision)


@pytest.mark.parametrize(("runner", "precision"), PAIRS, ids=[f"{r}-{p}" for r, p in PAIRS])
def test_runner_takes_a_read_only_batch(bundle_dir, slices, reference, runner, precision):
    """A batch in memory the runner may not write (a request body read with np.frombuffer, as the
    server does, or a read-only memory map) gives the same logits as a writeable copy."""
    import warnings

    frozen = np.frombuffer(slices.tobytes(), dtype=slices.dtype).reshape(slices.shape)
    assert not frozen.flags.writeable
    with _load(bundle_dir, runner, precision) as model, warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it is lent memory it may not write
        np.testing.assert_array_equal(model.infer(frozen[:1]), model.infer(slices[:1].copy()))
        np.testing.assert_array_equal(model.infer(frozen), model.infer(slices.copy()))


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


def test_torch_runner_on_the_checkpoint_matches_the_reference(bundle_dir, slices, reference):
    torch = pytest.importorskip("torch")
    from edgeseg.runtime.manifest import network_tensors
    from edgeseg.runtime.runners.torch_module import TorchModuleRunner

    manifest = read_manifest(bundle_dir)
    module = torch.jit.load(str(bundle_dir / "model.ts"))
    with TorchModuleRunner(module, *network_tensors(manifest.spec, manifest.num_classes), manifest.max_batch) as model:
        np.testing.assert_allclose(model.infer(slices), reference, atol=1e-4, rtol=1e-4)
        with pytest.raises(DataError, match="outside 1..8"):
            model.infer(np.concatenate([slices, slices[:1]]))


def test_every_registered_runner_is_covered():
    # Bundle runners are covered above (tensorrt in test_tensorrt.py); torch here; remote in tests/serve.
    assert {runner for runner, _ in PAIRS} | {"tensorrt", "torch", "remote"} == set(runners())


def test_runners_describe_themselves():
    for name, cls in runners().items():
        assert cls.name == name and cls.device_kind in ("cpu", "cuda")
        assert set(cls.precisions) <= {"fp32", "fp16", "int8"} and set(cls.preference) <= set(cls.precisions)
        if cls.library is not None:
            assert cls.extra, f"{name} needs {cls.library} but names no extra that installs it"
