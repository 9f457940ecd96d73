"""Histogram (entropy / percentile) calibration that streams activations instead of holding them.

ONNX Runtime's ``HistogramCalibrater.collect_data`` keeps every intermediate output of every
calibration batch in memory and only then builds one histogram per tensor: for a U-Net at
256x256 that is gigabytes per dozen slices. Feeding it one batch at a time is no fix, because
its histogram merge depends on the order of the batches (the first batch fixes the bin width),
so the ranges would change.

Here the same histograms are built in two streamed passes over the calibration slices, a few
slices at a time: the first pass finds each tensor's min and max (what ONNX Runtime derives from
all data at once), the second adds each chunk's counts into histograms with those fixed edges.
Counting into fixed bins is additive, so the histograms, and the ranges ONNX Runtime's own
collector computes from them, equal those of the all-at-once calibration exactly (checked in
``tests/export/test_streamed_calibration.py``). Memory is one chunk's activations.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

# Slices per inference call: the augmented graph returns every activation of the chunk.
CHUNK_SLICES = 2
HISTOGRAM_METHODS = ("entropy", "percentile")


def streamed_tensor_ranges(model_path: str | Path, images: np.ndarray, method: str, input_name: str,
                           chunk: int = CHUNK_SLICES, on_chunk: Callable[[int], None] | None = None):
    """ONNX Runtime ``TensorsData`` for ``method`` ("entropy" or "percentile") of the graph at
    ``model_path`` calibrated on ``images`` (N, C, H, W), streamed ``chunk`` slices at a time.

    The calibrator (augmented graph, tensor selection, bin counts, symmetry) is ONNX Runtime's,
    created with the defaults ``quantize_static`` uses; only the collection is replaced.
    ``on_chunk(n)`` is called after each chunk of both passes with its slice count.
    """
    from onnxruntime.quantization.calibrate import TensorsData

    collector, ort_method = streamed_collector(model_path, images, method, input_name, chunk, on_chunk)
    return TensorsData(ort_method, collector.compute_collection_result())


def streamed_collector(model_path: str | Path, images: np.ndarray, method: str, input_name: str,
                       chunk: int = CHUNK_SLICES, on_chunk: Callable[[int], None] | None = None):
    """ONNX Runtime's ``HistogramCollector`` filled, chunk by chunk, with the histograms its
    calibrator would build from all of ``images`` at once; returns (collector, CalibrationMethod)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, create_calibrator

    if method not in HISTOGRAM_METHODS:
        raise ValueError(f"streamed calibration is for {HISTOGRAM_METHODS}, got {method!r}")
    ort_method = CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.Percentile
    with tempfile.TemporaryDirectory(prefix="edgeseg-calib-") as tmp:
        calibrator = create_calibrator(Path(model_path), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=ort_method, extra_options={})
        session = calibrator.infer_session
        names = [o.name for o in session.get_outputs()]
        wanted = [(i, name) for i, name in enumerate(names) if name in calibrator.tensors_to_calibrate]
        # ORT histograms |x| for symmetric percentile calibration, the signed values otherwise.
        absolute = method == "percentile" and calibrator.symmetric

        def chunks() -> Iterator[list[np.ndarray]]:
            for start in range(0, len(images), chunk):
                outputs = session.run(None, {input_name: np.ascontiguousarray(images[start : start + chunk])})
                yield [outputs[i] for i, _ in wanted]
                if on_chunk is not None:
                    on_chunk(min(chunk, len(images) - start))

        bounds = _tensor_bounds(chunks(), len(wanted), absolute)
        histograms = _fixed_histograms(chunks(), bounds, calibrator.num_bins, absolute)
        collector = HistogramCollector(method=calibrator.method, symmetric=calibrator.symmetric,
                                       num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
                                       percentile=calibrator.percentile, scenario=calibrator.scenario)
        collector.histogram_dict = {name: entry for (_, name), entry in zip(wanted, histograms)}
        del calibrator, session
    return collector, ort_method


def _tensor_bounds(chunks: Iterator[list[np.ndarray]], count: int, absolute: bool) -> list[tuple]:
    """Per tensor (min, max) over all chunks, and (min |x|, max |x|) when ``absolute``."""
    bounds: list = [None] * count
    for arrays in chunks:
        for k, arr in enumerate(arrays):
            flat = arr.ravel()
            if flat.size == 0:
                continue
            found = (np.nanmin(flat), np.nanmax(flat))
            if absolute:
                magnitude = np.absolute(flat)
                found += (np.nanmin(magnitude), np.nanmax(magnitude))
            old = bounds[k]
            bounds[k] = found if old is None else tuple(
                min(a, b) if j % 2 == 0 else max(a, b) for j, (a, b) in enumerate(zip(old, found)))
    return bounds


def _fixed_histograms(chunks: Iterator[list[np.ndarray]], bounds: list[tuple], bins: int, absolute: bool) -> list[tuple]:
    """Histograms with the edges ONNX Runtime's collector gives all data at once, summed chunk by
    chunk, in its layout: (hist, edges, min, max, threshold) signed, (hist, edges, min, max) on |x|."""
    ranges = []
    for found in bounds:
        if found is None:  # every chunk empty: ORT's zero range
            found = (np.float32(0), np.float32(0), np.float32(0), np.float32(0))
        if absolute:
            ranges.append((found[2], found[3]))  # np.histogram's default range: the data's own min, max
        else:
            threshold = np.array(max(abs(found[0]), abs(found[1])), dtype=found[0].dtype)
            ranges.append((-threshold, threshold))
    counts: list = [None] * len(bounds)
    edges: list = [None] * len(bounds)
    for arrays in chunks:
        for k, arr in enumerate(arrays):
            flat = arr.ravel()
            hist, edges[k] = np.histogram(np.absolute(flat) if absolute else flat, bins, range=ranges[k])
            counts[k] = hist if counts[k] is None else counts[k] + hist
    out = []
    for k, found in enumerate(bounds):
        low, high = (found[0], found[1]) if found is not None else (np.float32(0), np.float32(0))
        if absolute:
            out.append((counts[k], edges[k].astype(low.dtype), low, high))
        else:
            out.append((counts[k], edges[k], low, high, ranges[k][1]))
    return out
