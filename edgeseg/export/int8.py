"""INT8 artifact: explicit (Q/DQ) quantisation calibrated on real, stratified CT slices.

Two schemes, one per kind of target (``SCHEMES``); both use the QDQ format, signed symmetric
per-channel weights and biases left in float (TensorRT fuses them; it has no INT32
dequantisation for them). They differ in the activations:

* ``cpu``: unsigned 8-bit activations with a zero point from the calibrated range, and weights
  in 7 bits (-64..64, ONNX Runtime's ``reduce_range``). x86 CPU kernels multiply u8 activations
  by s8 weights; on CPUs without VNNI the instruction that does it (``vpmaddubsw``) adds pairs of
  products into 16 bits with saturation. With 7-bit weights a pair is at most 2 * 255 * 64 =
  32640 < 32767, so it never saturates: the graph computes the same integers on every x86 CPU,
  and the gate's verdict on the export machine holds on the deployment machine.
* ``tensorrt``: signed activations with zero points 0 and 8-bit weights, the form TensorRT takes
  for explicit quantisation (GPUs do not saturate). CPU kernels shift signed activations by 128
  into u8, so post-ReLU values land in 128..255 and the 16-bit pair sums saturate on CPUs
  without VNNI: measured on an AVX2-only CPU, phantom models' INT8 agreement drop reached
  0.06-0.30 on ONNX Runtime and 0.06-0.33 on OpenVINO with this scheme. The gate measures each
  runner on the export machine, so such a runner is left out of ``auto`` there; a CPU with VNNI
  passing it says nothing about one without.

Calibration slices are drawn equally from each combination of classes present (when labels
exist: for one class, half with and half without the target; for several, every class is
represented) and, within each group, evenly across the range of mean windowed HU, so both
empty slices and dense organ or lesion slices set the activation ranges.

Quantised graphs are cached under a key made of the FP32 graph's sha256, the calibration data
hash, the spec hash, the method and the scheme's settings: change any of them and the cache misses.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.atomic import atomic_path, atomic_write_text
from edgeseg.errors import DataError, require
from edgeseg.export.calibration import HISTOGRAM_METHODS, streamed_tensor_ranges
from edgeseg.progress import progress_bar
from edgeseg.runtime.manifest import sha256_file
from edgeseg.spec import PreprocessSpec

log = logging.getLogger("edgeseg.export")

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
_COMMON = {"quant_format": "QDQ", "weight_type": "QInt8", "per_channel": True, "WeightSymmetric": True,
           "QuantizeBias": False}
SCHEMES = {"cpu": {**_COMMON, "activation_type": "QUInt8", "ActivationSymmetric": False, "reduce_range": True},
           "tensorrt": {**_COMMON, "activation_type": "QInt8", "ActivationSymmetric": True, "reduce_range": False}}
READ_BATCH = 8


@dataclass
class CalibrationSet:
    """Model-input slices for calibration and what they are.

    Attributes:
        images: (N, 1, H, W) float32, pre-processed with the model's spec.
        data_hash: sha256 of the chosen source slices (case, index, raw values).
        summary: counts with / without target, the mean-HU range covered and the ids of the
            cases the slices were drawn from (None for a pre-processed array).
    """

    images: np.ndarray
    data_hash: str
    summary: dict


def load_calibration(source: str, spec: PreprocessSpec, count: int, label_values: dict | None = None,
                     intensity: str | None = None, exclude_cases: set[str] | frozenset = frozenset(),
                     slice_options: dict | None = None) -> CalibrationSet:
    """Draw ``count`` stratified calibration slices from ``source`` and pre-process them.

    ``source`` is any data source ``open_dataset`` reads, or a ``.npy`` array of slices
    already pre-processed to the model input (N, 1, H, W). Data that cannot have been made with
    ``spec`` (another size, values outside the window's range, a source whose HU range does
    not cover the window) is refused. Cases in ``exclude_cases`` (the held-out cases the gate
    checks on) are left out, so calibration never sees the slices it is judged on.
    ``slice_options`` (case pattern, mask kind) are passed to ``open_dataset``.

    The cases are read one at a time, twice: once to describe every slice, once more (only
    those holding a chosen slice) to hash and pre-process the chosen ones, so memory is one
    case, not the data set; held-out cases are not read at all.
    """
    if str(source).endswith(".npy"):
        return _load_array(Path(source), spec, count)
    from edgeseg.data.case_stream import CaseVolumes, open_case_readers
    from edgeseg.data.slice_set import check_window, preprocess_stack, volume_classes

    volumes = CaseVolumes(open_case_readers(source, intensity=intensity, **(slice_options or {})),
                          lambda case_id: case_id not in exclude_cases)
    keys, picks, case_ids = [], [], []  # picks: (volume number, slice number in it)
    for vol in volumes:
        check_window(vol, spec)
        target = None
        if vol.label is not None:
            # Without a class mapping the source values are not classes: any label is target.
            target = volume_classes(vol, label_values) if label_values else (vol.label > 0).astype(np.uint8)
        low, high = spec.window
        means = np.clip(vol.hu, low, high).mean(axis=(1, 2))
        for k in range(vol.num_slices):
            keys.append((None if target is None else classes_present(target[k]), float(means[k])))
            picks.append((len(case_ids), k))
        case_ids.append(vol.case_id)
        del vol, target, means  # not held while the next case is read
    if not case_ids:
        raise DataError(f"calibration data {source} holds no slices outside the held-out cases")
    chosen = stratify_slices(keys, count)
    digest, images = hashlib.sha256(), []
    # chosen is ascending and reread goes in reading order, so slices keep the order of chosen
    for n, vol in volumes.reread({picks[i][0] for i in chosen}):
        for k in (picks[i][1] for i in chosen if picks[i][0] == n):
            digest.update(f"{vol.case_id}:{k}:".encode())
            digest.update(np.ascontiguousarray(vol.hu[k], dtype=np.float32).tobytes())
            images.append(preprocess_stack(vol.hu[k : k + 1], spec))
        del vol
    images = np.concatenate(images)
    flags = [keys[i][0] for i in chosen]
    chosen_cases = {case_ids[picks[i][0]] for i in chosen}
    summary = {"slices": len(chosen), "cases": len(chosen_cases),
               "with_target": sum(bool(f) for f in flags), "without_target": sum(f == () for f in flags),
               "unlabelled": sum(f is None for f in flags), "excluded_cases": len(exclude_cases),
               "mean_hu_range": [min(keys[i][1] for i in chosen), max(keys[i][1] for i in chosen)],
               "case_ids": sorted(chosen_cases)}
    if any(f and max(f) > 1 for f in flags):  # several classes: how many slices show each
        summary["with_class"] = {str(c): sum(c in f for f in flags if f) for c in sorted({c for f in flags if f for c in f})}
    return CalibrationSet(images, digest.hexdigest(), summary)


def classes_present(label_slice: np.ndarray) -> tuple[int, ...]:
    """The foreground classes (values > 0) present in one label-map slice, ascending: the
    group a slice falls in for stratified selection (``()`` for a slice without target)."""
    values = np.unique(np.asarray(label_slice))
    return tuple(int(v) for v in values[values > 0])


def stratify_slices(keys: list[tuple[object, float]], count: int) -> list[int]:
    """Indices of up to ``count`` slices, dealt equally to the groups of ``keys[i][0]`` (a
    target flag, or the :func:`classes_present` tuple, so every class combination is drawn:
    half with and half without target for one class), each group spread evenly over the sorted
    mean HU ``keys[i][1]``, so the extremes are always included."""
    groups: dict[bool | None, list[int]] = {}
    for i, (flag, _) in enumerate(keys):
        groups.setdefault(flag, []).append(i)
    wanted = {flag: 0 for flag in groups}
    remaining = min(count, len(keys))
    while remaining:  # deal slices round-robin to the groups that still have some
        for flag in wanted:
            if remaining and wanted[flag] < len(groups[flag]):
                wanted[flag] += 1
                remaining -= 1
    chosen = []
    for flag, members in groups.items():
        ordered = sorted(members, key=lambda i: keys[i][1])
        positions = np.unique(np.round(np.linspace(0, len(ordered) - 1, wanted[flag])).astype(int)) if wanted[flag] else []
        chosen += [ordered[p] for p in positions]
    return sorted(chosen)


def _load_array(path: Path, spec: PreprocessSpec, count: int) -> CalibrationSet:
    from edgeseg.limits import check_file_holds
    from edgeseg.runtime.readers import npy_header

    if not path.is_file():
        raise DataError(f"calibration array {path} not found")
    # Shape, type and size from the header first: np.load allocates whatever the header claims.
    shape, dtype, offset = npy_header(path)
    expected = (1, *spec.size)
    if len(shape) != 4 or tuple(shape[1:]) != expected or shape[0] == 0:
        raise DataError(f"calibration array {path} has shape {list(shape)}; the model takes [N, {', '.join(map(str, expected))}] (spec size {list(spec.size)})")
    if dtype.kind not in "iuf" or dtype.fields is not None:
        raise DataError(f"calibration array {path} holds {dtype} values; expected pre-processed slices (float32)")
    check_file_holds(path, "header field shape", int(np.prod(shape, dtype=object)) * dtype.itemsize,
                     path.stat().st_size - offset)
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"calibration array {path} is not a readable .npy file ({exc})") from None
    a, b = spec.scale_offset
    low, high = sorted((a * spec.window[0] + b, a * spec.window[1] + b))
    lo, hi = float(images.min()), float(images.max())  # NaN propagates into both, infinities show
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(f"calibration array {path} holds NaN or infinite values; pre-processed slices are finite")
    if lo < low - 1e-3 or hi > high + 1e-3:
        raise DataError(f"calibration array {path} spans [{lo:.3g}, {hi:.3g}], outside what spec window {list(spec.window)} produces [{low:.3g}, {high:.3g}]; was it made with another spec?")
    chosen = stratify_slices([(None, float(s.mean())) for s in images], count)
    images = np.ascontiguousarray(images[chosen], dtype=np.float32)
    summary = {"slices": len(chosen), "cases": None, "with_target": 0, "without_target": 0, "unlabelled": len(chosen),
               "excluded_cases": 0, "mean_hu_range": None, "case_ids": None}
    return CalibrationSet(images, hashlib.sha256(images.tobytes()).hexdigest(), summary)


def _reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    class SliceCalibrationReader(CalibrationDataReader):
        """Feeds calibration slices to ONNX Runtime in batches, with a progress bar."""

        def __init__(self, images: np.ndarray, input_name: str, progress: bool) -> None:
            # Batches of one size: ONNX Runtime's histogram collector stacks every batch's outputs
            # with np.asarray, which refuses a shorter last batch (an inhomogeneous shape).
            size = max(d for d in range(1, READ_BATCH + 1) if len(images) % d == 0)
            self.batches = [images[i : i + size] for i in range(0, len(images), size)]
            self.input_name = input_name
            self.bar = progress_bar(total=len(images), desc="calibrate", unit="slice", shown=progress)
            self.position = 0

        def get_next(self) -> dict | None:
            if self.position >= len(self.batches):
                self.bar.close()
                return None
            batch = self.batches[self.position]
            self.position += 1
            self.bar.update(len(batch))
            return {self.input_name: batch}

    return SliceCalibrationReader


def _tidy_graph(path: str | Path) -> None:
    """Rewrite the quantised graph at ``path`` to import only the opset domains its nodes use (those
    of subgraphs and local functions included, and ai.onnx always), with its value_info in name order.

    ONNX Runtime's quantiser imports every domain it knows (ai.onnx.ml 5, com.microsoft.nchwc,
    org.pytorch.aten, ...); an older ONNX Runtime refuses a graph importing a domain version newer
    than its own even when no node uses it. Older quantisers also write value_info in an order
    that changes from run to run, so equal graphs would hash differently.
    """
    import onnx

    model = onnx.load(str(path))
    nodes = [*model.graph.node, *(node for function in model.functions for node in function.node)]
    used = {""} | {domain if domain != "ai.onnx" else "" for domain in _node_domains(nodes)}
    kept = [op for op in model.opset_import if (op.domain if op.domain != "ai.onnx" else "") in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    infos = sorted(model.graph.value_info, key=lambda v: v.name)
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def _node_domains(nodes: Iterable) -> Iterator[str]:
    """The domains of ``nodes`` and of the nodes of their subgraphs (If, Loop, Scan bodies), nested."""
    from onnx import AttributeProto

    for node in nodes:
        yield node.domain
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _node_domains(attr.g.node)
            elif attr.type == AttributeProto.GRAPHS:
                for graph in attr.graphs:
                    yield from _node_domains(graph.node)


def _streamed_ranges(model: Path, images: np.ndarray, method: str, input_name: str, progress: bool):
    """Histogram calibration ranges of ``model`` on ``images``, streamed, with a progress bar."""
    # Two passes over the slices (bounds, then histograms): the bar counts both.
    with progress_bar(total=2 * len(images), desc="calibrate", unit="slice", shown=progress) as bar:
        return streamed_tensor_ranges(model, images, method, input_name, on_chunk=bar.update)


def _takes_calibration_cache(quantize_static) -> bool:
    """True when ``quantize_static`` accepts precomputed ranges (``calibration_cache_path``)."""
    import inspect

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def cache_key(model_hash: str, data_hash: str, spec_hash: str, method: str, scheme: str = "cpu") -> str:
    """Hex key of a quantised graph: any change of model, data, spec, method or scheme changes it."""
    text = json.dumps({"model": model_hash, "data": data_hash, "spec": spec_hash, "method": method,
                       "settings": SCHEMES[scheme]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _cached_graph_intact(cached: Path) -> bool:
    """Whether ``cached`` is the graph its record (written after it) says it is: a damaged or
    unrecorded cache file is a miss and is quantised again, not copied into the bundle."""
    try:
        record = json.loads(cached.with_suffix(".json").read_text())
        return isinstance(record, dict) and record.get("graph_sha256") == sha256_file(cached)
    except (OSError, ValueError):
        return False


def quantize_int8(fp32_onnx: str | Path, dst: str | Path, calib: CalibrationSet, spec: PreprocessSpec,
                  method: str, cache_dir: str | Path | None, input_name: str = "image", progress: bool = True,
                  scheme: str = "cpu") -> dict:
    """Quantise ``fp32_onnx`` to a Q/DQ INT8 graph at ``dst`` with ``scheme`` (see ``SCHEMES``);
    returns the calibration record.

    With ``cache_dir`` a graph quantised before from the same model, data, spec, method and scheme is
    copied instead of recalibrating; the record says whether the cache was used.
    """
    if method not in METHODS:
        raise DataError(f"calibration method must be one of {sorted(METHODS)}, got {method!r}")
    if scheme not in SCHEMES:
        raise DataError(f"INT8 scheme must be one of {sorted(SCHEMES)}, got {scheme!r}")
    settings = SCHEMES[scheme]
    require("onnx", "export", "INT8 quantisation")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    record = {"method": method, **calib.summary, "data_hash": calib.data_hash, "spec_hash": spec.hash,
              "model_hash": sha256_file(fp32_onnx), "scheme": scheme, "settings": settings}
    key = cache_key(record["model_hash"], calib.data_hash, spec.hash, method, scheme)
    cached = Path(cache_dir) / f"int8-{key}.onnx" if cache_dir else None
    if cached is not None and _cached_graph_intact(cached):
        shutil.copyfile(cached, dst)
        _tidy_graph(dst)  # an entry cached before graphs were tidied
        return {**record, "cache": "hit", "cache_key": key}
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = Path(dst).with_suffix(".prep.onnx")
    options = dict(quant_format=getattr(QuantFormat, settings["quant_format"]), per_channel=settings["per_channel"],
                   activation_type=getattr(QuantType, settings["activation_type"]),
                   weight_type=getattr(QuantType, settings["weight_type"]),
                   calibrate_method=getattr(CalibrationMethod, METHODS[method]), reduce_range=settings["reduce_range"],
                   extra_options={k: settings[k] for k in ("ActivationSymmetric", "WeightSymmetric", "QuantizeBias")})
    # ONNX Runtime prints its histogram progress to stdout; our bar replaces it.
    with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory(prefix="edgeseg-int8-") as tmp:
        # Shape inference and basic (standard-op) optimisation first, as ONNX Runtime advises:
        # quantisation parameters are then placed on the graph that will actually run.
        # auto_merge: a Resize by constant scales names its batch axis floor(1.0*batch); merging
        # it with batch lets a skip concatenation after bilinear upsampling be inferred.
        quant_pre_process(str(fp32_onnx), str(prepared), auto_merge=True)
        if method in HISTOGRAM_METHODS and _takes_calibration_cache(quantize_static):
            from onnxruntime.quantization.calibrate import save_tensors_data

            ranges = Path(tmp) / "ranges.json"
            save_tensors_data(_streamed_ranges(prepared, calib.images, method, input_name, progress), ranges)
            quantize_static(str(prepared), str(dst), None, calibration_cache_path=str(ranges), **options)
        else:
            if method in HISTOGRAM_METHODS:
                log.warning("this onnxruntime cannot take precomputed ranges (quantize_static has no "
                            "calibration_cache_path); calibrating with all activations in memory")
            quantize_static(str(prepared), str(dst), _reader_class()(calib.images, input_name, progress), **options)
    prepared.unlink(missing_ok=True)
    _tidy_graph(dst)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:
            shutil.copyfile(dst, tmp)
        atomic_write_text(cached.with_suffix(".json"),
                          json.dumps({**record, "graph_sha256": sha256_file(cached)}, indent=2) + "\n")
    return {**record, "cache": "miss" if cached is not None else "off", "cache_key": key}
