"""Streamed histogram calibration equals ONNX Runtime's all-at-once calibration, exactly.

The oracle is ONNX Runtime's own calibrator fed every calibration slice in one
``collect_data`` call (what ``quantize_static`` does), plus a brute-force numpy histogram of
all activations; the streamed collector must reproduce the histograms, the ranges and the
quantised graph bit for bit, with a chunk size that does not divide the slice count.
"""

import shutil

import numpy as np
import pytest

from edgeseg.export.calibration import streamed_collector, streamed_tensor_ranges
from edgeseg.export.int8 import CalibrationSet, quantize_int8
from edgeseg.spec import PreprocessSpec

SLICES, CHUNK = 12, 5


@pytest.fixture(scope="module")
def prepared(bundle, tmp_path_factory):
    """The bundle's FP32 graph after ONNX Runtime's pre-processing (what calibration runs on)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder = tmp_path_factory.mktemp("calib")
    shutil.copyfile(bundle["bundle"] / "model.onnx", folder / "model.onnx")
    quant_pre_process(str(folder / "model.onnx"), str(folder / "prep.onnx"))
    return folder / "prep.onnx"


@pytest.fixture(scope="module")
def images(slices):
    return np.ascontiguousarray(np.concatenate([slices, slices[::-1] * 0.5])[:SLICES], dtype=np.float32)


def _all_at_once(model, images, method):
    """ONNX Runtime's calibrator with every slice collected in one call."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = [{"image": images[i : i + 4]} for i in range(0, len(images), 4)]

        def get_next(self):
            return self.batches.pop(0) if self.batches else None

    ort_method = CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.Percentile
    calibrator = create_calibrator(model, None, augmented_model_path=str(model.with_name(f"aug-{method}.onnx")),
                                   calibrate_method=ort_method, extra_options={})
    calibrator.collect_data(Reader())
    return calibrator


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_streamed_histograms_and_ranges_equal_all_at_once(prepared, images, method):
    oracle = _all_at_once(prepared, images, method)
    expected = oracle.collector.histogram_dict
    collector, _ = streamed_collector(prepared, images, method, "image", chunk=CHUNK)
    assert set(collector.histogram_dict) == set(expected) and len(expected) > 10
    for name, want in expected.items():
        got = collector.histogram_dict[name]
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b), name
    ranges = streamed_tensor_ranges(prepared, images, method, "image", chunk=CHUNK)
    oracle_ranges = oracle.compute_data()
    for name in expected:
        assert np.array_equal(ranges[name].range_value, oracle_ranges[name].range_value), name


def test_signed_histograms_equal_brute_force_numpy(prepared, images):
    """Entropy histograms against np.histogram of every activation, range +-max|x|, 128 bins."""
    collector, _ = streamed_collector(prepared, images, "entropy", "image", chunk=CHUNK)
    session = _all_at_once(prepared, images, "entropy").infer_session  # ORT's augmented graph, unoptimised
    names = [o.name for o in session.get_outputs()]
    # Same chunks as the collector: ORT's convolution results depend (in the last bit) on the batch size.
    runs = [session.run(None, {"image": images[i : i + CHUNK]}) for i in range(0, len(images), CHUNK)]
    outputs = {name: np.concatenate([r[k].ravel() for r in runs]) for k, name in enumerate(names)}
    for name, (hist, edges, low, high, threshold) in collector.histogram_dict.items():
        values = outputs[name].ravel()
        assert low == values.min() and high == values.max() and threshold == np.abs(values).max()
        want, want_edges = np.histogram(values, 128, range=(-threshold, threshold))
        assert np.array_equal(hist, want) and np.array_equal(edges, want_edges) and hist.sum() == values.size, name


# Each scheme's quantize_static options, written out here as the oracle (edgeseg.export.int8.SCHEMES).
ORACLE_OPTIONS = {"cpu": ("QUInt8", False, True), "tensorrt": ("QInt8", True, False)}


@pytest.mark.parametrize("scheme", sorted(ORACLE_OPTIONS))
def test_quantised_graph_equals_onnxruntime_all_at_once(bundle, images, tmp_path, scheme):
    """The INT8 graph from streamed ranges is the one quantize_static makes on its own."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = tmp_path / "model.onnx"
    shutil.copyfile(bundle["bundle"] / "model.onnx", fp32)
    calib = CalibrationSet(images, "test", {"slices": len(images)})
    quantize_int8(fp32, tmp_path / "streamed.onnx", calib, PreprocessSpec(window=(0.0, 255.0), size=(64, 64)),
                  "entropy", None, progress=False, scheme=scheme)
    activation_type, symmetric, reduce_range = ORACLE_OPTIONS[scheme]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = [{"image": images[i : i + 4]} for i in range(0, len(images), 4)]

        def get_next(self):
            return self.batches.pop(0) if self.batches else None

    quant_pre_process(str(fp32), str(tmp_path / "prep.onnx"))
    quantize_static(str(tmp_path / "prep.onnx"), str(tmp_path / "oracle.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=getattr(QuantType, activation_type), weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Entropy, reduce_range=reduce_range,
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": False})
    got, want = (onnx.load(str(tmp_path / f)).graph for f in ("streamed.onnx", "oracle.onnx"))
    got_init = {t.name: onnx.numpy_helper.to_array(t) for t in got.initializer}
    want_init = {t.name: onnx.numpy_helper.to_array(t) for t in want.initializer}
    assert set(got_init) == set(want_init) and any(n.endswith("_scale") for n in want_init)
    for name, value in want_init.items():
        assert np.array_equal(got_init[name], value), name
    assert [n.op_type for n in got.node] == [n.op_type for n in want.node]
