"""Test-time mirroring: the averaged probabilities against a scipy oracle, the Segmenter's labels
against ONNX Runtime + numpy reference kernels on the four mirrors, the number of network passes,
and bad modes refused before anything loads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.special import softmax

from edgeseg.cli.tta_option import TTA_CHOICES
from edgeseg.data.phantom import synth_phantom
from edgeseg.errors import DataError
from edgeseg.kernels import filter_components, postprocess, preprocess
from edgeseg.runtime import Segmenter
from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.postprocess_options import PostprocessOptions
from edgeseg.runtime.tta import TTA_MODES, mirrored_logits

# The mirrors of each mode, written out: (flip rows, flip columns) of an (H, W) slice.
MIRRORS = {"flip": [(False, False), (False, True)],
           "mirror": [(False, False), (False, True), (True, False), (True, True)]}


def _mirror(a: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    """Flip the last two axes of ``a`` as told, by reversed index arrays (not np.flip)."""
    if rows:
        a = a[..., ::-1, :]
    if cols:
        a = a[..., :, ::-1]
    return a


def _oracle_log_mean_probs(infer, batch: np.ndarray, mode: str) -> np.ndarray:
    probs = [_mirror(softmax(infer(np.ascontiguousarray(_mirror(batch, r, c))).astype(np.float64), axis=1), r, c)
             for r, c in MIRRORS[mode]]
    return np.log(np.mean(probs, axis=0))


def _position_net(batch: np.ndarray) -> np.ndarray:
    """A deterministic 3-class 'network' that depends on position, so mirrors disagree."""
    n, _, h, w = batch.shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    x = batch[:, 0]
    return np.stack([x * 2 - xx, x * yy + 0.3 * xx, np.sin(3 * x) + yy * xx], axis=1).astype(np.float32)


def test_the_cli_choices_are_the_modes():
    assert TTA_CHOICES == tuple(TTA_MODES)


@pytest.mark.parametrize("mode", ["flip", "mirror"])
def test_mirrored_logits_are_the_log_of_the_mean_probabilities(mode):
    batch = np.random.default_rng(3).normal(size=(2, 1, 9, 14)).astype(np.float32)
    got = mirrored_logits(_position_net, batch, mode)
    assert got.dtype == np.float32 and got.shape == (2, 3, 9, 14)
    np.testing.assert_allclose(got, _oracle_log_mean_probs(_position_net, batch, mode), rtol=1e-5, atol=1e-5)
    # The mirrors matter for this network: the result is not the single pass's log-softmax.
    single = np.log(softmax(_position_net(batch).astype(np.float64), axis=1))
    assert np.abs(got - single).max() > 0.05


def test_none_is_one_pass_returning_the_network_output_itself():
    out = np.zeros((1, 2, 4, 4), np.float32)
    calls = []
    assert mirrored_logits(lambda b: calls.append(b) or out, np.ones((1, 1, 4, 4), np.float32), "none") is out
    assert len(calls) == 1


def test_a_mirror_equivariant_network_keeps_its_labels():
    """A pixel-wise network gives each mirror the same answer, so mirroring changes no label."""
    def pointwise(b):
        return np.concatenate([b, -b, 0.5 * b ** 2], axis=1)

    batch = np.random.default_rng(4).normal(size=(3, 1, 8, 8)).astype(np.float32)
    for mode in ("flip", "mirror"):
        np.testing.assert_array_equal(np.argmax(mirrored_logits(pointwise, batch, mode), axis=1),
                                      np.argmax(pointwise(batch), axis=1))


@pytest.mark.parametrize("mode", ["flip", "mirror"])
def test_segmenter_labels_match_onnxruntime_on_the_mirrors(bundle_dir, mode):
    import onnxruntime as ort

    manifest = read_manifest(bundle_dir)
    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    vol = synth_phantom("case_011", 5, shape=(6, 90, 110))
    batch = preprocess(vol.hu.astype(np.float32), manifest.spec, reference=True)
    log_probs = _oracle_log_mean_probs(lambda b: session.run(None, {"image": b})[0], batch, mode)
    options = PostprocessOptions.from_dict(manifest.postprocess, len(manifest.labels))
    want = postprocess(log_probs.astype(np.float32), vol.hu.shape[1:], resize=options.resize, reference=True)
    rules = options.slice_rules(vol.hu.shape[1:], manifest.spec.size)
    want = filter_components(want, rules, reference=True) if rules else want
    plain = Segmenter.load(bundle_dir, backend="onnxruntime:fp32")
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32", tta=mode) as seg, plain:
        assert seg.describe()["tta"] == mode and "tta" not in plain.describe()
        got = seg.predict_volume(vol.hu, volume_filters=False)
        one = seg.predict(vol.hu[3])
        single = plain.predict_volume(vol.hu, volume_filters=False)
    # Ties of float32 sums can fall either way; the oracle is float64.
    assert np.mean(got != want) < 1e-4, f"{int((got != want).sum())} of {got.size} labels differ"
    np.testing.assert_array_equal(one, got[3])
    assert (got != single).any(), "mirroring changed no label: the test would not see it missing"


class _Counting:
    """Wraps a runner, counting the batches it is given."""

    def __init__(self, runner):
        self.runner, self.calls = runner, 0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def infer(self, batch):
        self.calls += 1
        return self.runner.infer(batch)


@pytest.mark.parametrize("mode", list(TTA_MODES))
def test_network_passes_per_batch(bundle_dir, mode):
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32", tta=mode) as seg:
        seg.runner = counting = _Counting(seg.runner)
        seg.predict_volume(np.full((5, 64, 64), 40, np.int16), batch_size=5, volume_filters=False)
        assert counting.calls == len(TTA_MODES[mode])
        counting.calls = 0
        seg.logits(np.zeros((5, 1, 64, 64), np.float32))       # the export gate's view: one pass
        seg.infer(np.zeros((1, 1, 64, 64), np.float32))
        assert counting.calls == 2


def test_an_unknown_mode_is_refused_before_loading(tmp_path):
    with pytest.raises(DataError, match=r"test-time augmentation must be one of none, flip, mirror, got 'rot90'"):
        Segmenter.load(tmp_path / "no-bundle-here", tta="rot90")
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(tmp_path), str(tmp_path / "x.npy"),
                           "--out", str(tmp_path / "y.npy"), "--tta", "rot90"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "'rot90' is not one of 'none', 'flip', 'mirror'" in done.stderr
    assert not (tmp_path / "y.npy").exists()


def test_nonfinite_logits_stay_nonfinite_and_prediction_refuses_them():
    """NaN or inf logits come out NaN (as in the C API), so post-processing refuses the batch
    instead of labelling it background."""
    from edgeseg.runtime.manifest import network_tensors
    from edgeseg.runtime.runners.base import Runner
    from edgeseg.spec import PreprocessSpec

    for bad in (np.nan, np.inf):
        def net(b, bad=bad):
            out = np.zeros((len(b), 2, 8, 8), np.float32)
            out[:, 1, 3, 4] = bad
            return out

        got = mirrored_logits(net, np.zeros((1, 1, 8, 8), np.float32), "mirror")
        assert np.isnan(got[0, :, 3, 4]).all()      # (and at its mirrors, where the other passes put it)
        assert np.isfinite(got[0, :, 0, 0]).all()

    class NaNRunner(Runner):
        name = "nan-test"

        def _infer(self, batch):
            return net(batch)

    spec = PreprocessSpec(window=(-100, 200), size=(8, 8))
    inputs, outputs = network_tensors(spec, 2)
    with Segmenter(spec, {0: "background", 1: "x"}, NaNRunner(inputs, outputs, 2), tta="flip") as seg:
        with pytest.raises(DataError, match="NaN or inf"):
            seg.predict(np.full((8, 8), 40, np.int16))
