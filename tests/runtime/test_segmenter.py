"""Segmenter: labels against a numpy + ONNX Runtime oracle, batching, threads, backend choice, bad input."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest

from edgeseg.data.phantom import synth_phantom
from edgeseg.errors import BackendError, BundleError, DataError
from edgeseg.kernels import filter_components, postprocess, preprocess
from edgeseg.runtime import Segmenter
from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.postprocess_options import PostprocessOptions
from edgeseg.runtime.runners.tensorrt import fingerprint_mismatch
from edgeseg.runtime.probe_cache import cache_path


def oracle_labels(bundle_dir, hu: np.ndarray, spacing=None) -> np.ndarray:
    """numpy reference pre/post-processing around a plain ONNX Runtime session on the FP32 graph;
    a (Z, Y, X) ``hu`` also gets the bundle's 3-D filters (scipy), as ``predict_volume`` does."""
    import onnxruntime as ort

    manifest = read_manifest(bundle_dir)
    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    stack = hu if hu.ndim == 3 else hu[None]
    logits = session.run(None, {"image": preprocess(stack.astype(np.float32), manifest.spec, reference=True)})[0]
    options = PostprocessOptions.from_dict(manifest.postprocess, len(manifest.labels))
    labels = postprocess(logits, stack.shape[1:], resize=options.resize, reference=True)
    rules = options.slice_rules(stack.shape[1:], manifest.spec.size)
    labels = filter_components(labels, rules, reference=True) if rules else labels
    if hu.ndim == 3 and options.filters_volume:
        labels = filter_components(labels, options.volume_rules(spacing), volume=True, reference=True)
    return labels


@pytest.fixture(scope="module")
def volume():
    return synth_phantom("case_007", 3, shape=(11, 90, 110))


@pytest.fixture
def fp32(bundle_dir):
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as seg:
        yield seg


def test_predict_matches_oracle_at_input_size(fp32, bundle_dir, volume):
    labels = fp32.predict(volume.hu[5])
    assert labels.shape == (90, 110) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, oracle_labels(bundle_dir, volume.hu[5])[0])
    assert fp32.labels[1] == "liver" and fp32.spec.size == (64, 64)


@pytest.mark.parametrize("overlap", [True, False], ids=["worker-overlap", "inline"])
@pytest.mark.parametrize("batch_size", [1, 3, 8, np.int64(4)])  # a numpy integer too (it was refused)
def test_predict_volume_matches_oracle_for_any_batch(fp32, bundle_dir, volume, batch_size, overlap):
    fp32.overlap = overlap
    try:
        labels = fp32.predict_volume(volume, batch_size=batch_size)
    finally:
        fp32.overlap = True
    assert labels.shape == volume.hu.shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, oracle_labels(bundle_dir, volume.hu, volume.spacing))


def test_volume_path_overlaps_only_where_a_core_is_free(bundle_dir):
    from edgeseg.runtime.segmenter import usable_cores

    cores = usable_cores()
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as every_core:
        assert every_core.runner.device == "cpu" and every_core.overlap is False
    if cores > 1:
        with Segmenter.load(bundle_dir, backend="onnxruntime:fp32", threads=cores - 1) as capped:
            assert capped.overlap is True


def test_the_model_finds_the_phantom_liver(fp32, volume):
    labels = fp32.predict_volume(volume)
    liver, truth = labels == 1, volume.label == 1
    dice = 2 * np.sum(liver & truth) / (np.sum(liver) + np.sum(truth))
    assert dice > 0.5, f"liver Dice {dice:.2f}"


def test_concurrent_calls_give_the_sequential_answers(fp32, volume):
    expected_volume = fp32.predict_volume(volume)
    expected_slices = [fp32.predict(s) for s in volume.hu]
    results: dict[int, object] = {}

    def work(k: int) -> None:
        results[k] = fp32.predict_volume(volume, batch_size=1 + k % 4) if k % 2 else fp32.predict(volume.hu[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, got in results.items():
        np.testing.assert_array_equal(got, expected_volume if k % 2 else expected_slices[k])


def test_auto_probes_once_logs_its_choice_and_caches_it(bundle_dir, caplog):
    with caplog.at_level(logging.INFO, logger="edgeseg"):
        first = Segmenter.load(bundle_dir)
    choice = first.backend
    first.close()
    assert f"backend auto -> {choice} (probe" in caplog.text
    cached = json.loads(cache_path().read_text())
    assert [entry["choice"] for entry in cached.values()] == [choice]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="edgeseg"), Segmenter.load(bundle_dir) as second:
        assert second.backend == choice
    assert f"backend auto -> {choice} (cached probe)" in caplog.text


def test_the_load_line_names_the_backend_its_artifact_and_the_device(bundle_dir, caplog):
    """predict, serve and listen logged "loaded BUNDLE with {'backend': ..., 'artifact': ...}", a dict."""
    artifacts = json.loads((bundle_dir / "manifest.json").read_text())["artifacts"]
    onnx = next(a["file"] for a in artifacts if a["format"] == "onnx" and a["precision"] == "fp32")
    with caplog.at_level(logging.INFO, logger="edgeseg"):
        Segmenter.load(bundle_dir, backend="onnxruntime:fp32").close()
    assert f"loaded {bundle_dir}: backend onnxruntime:fp32 ({onnx}), device cpu" in caplog.messages


def test_auto_without_probe_takes_the_preference_order(bundle_dir, monkeypatch, cpu_only):
    monkeypatch.setenv("EDGESEG_BACKEND_PROBE", "0")
    with Segmenter.load(bundle_dir) as seg:
        assert seg.runner.precision == "int8"
    assert not cache_path().exists()


def test_backend_list_falls_back_with_a_warning(bundle_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="edgeseg"), \
            Segmenter.load(bundle_dir, backend=["torchscript", "onnxruntime:fp32"], threads=1) as seg:
        assert seg.backend in ("torchscript:fp32", "onnxruntime:fp32")


@pytest.mark.parametrize(("backend", "message"), [
    ("tensorrt", "has no artifact in this bundle"),
    ("onnxruntime:fp16", "has no artifact in this bundle"),
    ("coreml", "unknown backend 'coreml'"),
])
def test_explicit_backend_that_cannot_run_is_refused(bundle_dir, backend, message):
    with pytest.raises(BackendError, match=message):
        Segmenter.load(bundle_dir, backend=backend)


def test_engine_fingerprint_mismatch_is_explained():
    here = {"gpu": "NVIDIA H100", "compute_capability": "9.0", "tensorrt": "10.13.0"}
    assert fingerprint_mismatch(dict(here), here) is None
    assert "compute_capability '8.9'" in fingerprint_mismatch({**here, "compute_capability": "8.9"}, here)
    assert "tensorrt '11.0.0'" in fingerprint_mismatch({**here, "tensorrt": "11.0.0"}, here)
    assert "no fingerprint" in fingerprint_mismatch(None, here)


@pytest.mark.parametrize(("hu", "message"), [
    (np.full((64, 64), np.nan, np.float32), "NaN"),
    (np.zeros((64, 64), bool), "real numbers"),
    (np.zeros((4, 64, 64), np.float32), r"\(H, W\)"),
    (np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), "looks normalised"),
    (np.full((64, 64), 1e6, np.float32), "CT stores HU"),
    (np.zeros((1, 64), np.int16), "too small"),
    (np.zeros((8193, 64), np.int16), "8193 x 64 is larger than the limit of 8192 rows and columns"),
])
def test_bad_slices_are_refused(fp32, hu, message):
    with pytest.raises(DataError, match=message):
        fp32.predict(hu)


@pytest.mark.parametrize(("shape", "message"), [
    ((0, 50, 70), r"volume of shape \[0, 50, 70\] has no slices"),  # was: "slices need at least 2 rows"
    ((3, 1, 70), r"too small; slices need at least 2 rows and columns"),
])
def test_empty_and_thin_volumes_are_refused_naming_what_is_missing(fp32, shape, message):
    with pytest.raises(DataError, match=message):
        fp32.predict_volume(np.full(shape, -1000, np.int16))


def test_a_masked_array_is_refused_not_read_without_its_mask(fp32):
    """np.asarray drops a mask: the masked pixels' stored values were segmented as HU."""
    hu = np.ma.masked_array(np.full((2, 64, 64), -1000, np.int16), mask=False)
    hu.mask[:, :8, :8] = True
    for call, data in ((fp32.predict_volume, hu), (fp32.predict, hu[0])):
        with pytest.raises(DataError, match="is a masked array; give the HU of every pixel"):
            call(data)


def test_other_modality_is_refused(fp32, volume):
    mr = synth_phantom("case_001", 0, shape=(2, 64, 64))
    mr.modality = "MR"
    with pytest.raises(DataError, match="MR series"):
        fp32.predict_volume(mr)


def test_wrong_size_is_refused_when_the_bundle_forbids_resizing(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["resize_input"] = False
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with Segmenter.load(bundle_copy, backend="onnxruntime") as seg:
        assert seg.predict(np.full((64, 64), -1000, np.int16)).shape == (64, 64)
        with pytest.raises(DataError, match="takes 64x64 only"):
            seg.predict(np.full((80, 64), -1000, np.int16))


def test_tampered_missing_and_newer_bundles_are_refused(bundle_copy):
    path = bundle_copy / "model.int8.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 of model.int8.onnx .*\(tampered\)"):
        Segmenter.load(bundle_copy)
    path.unlink()
    with pytest.raises(BundleError, match="model.int8.onnx .* is missing"):
        Segmenter.load(bundle_copy)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["schema"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema 99 is newer"):
        Segmenter.load(bundle_copy)


@pytest.mark.parametrize("bundle", [None, 3, b"bundle"])
def test_a_bundle_that_is_no_path_is_refused_as_a_bundle_error(bundle):
    with pytest.raises(BundleError, match=f"a bundle is a folder path .*got {type(bundle).__name__}"):
        Segmenter.load(bundle)
