"""The Bundle contract: ``manifest.json`` and the checks the runtime makes before loading.

A bundle is one directory holding ``manifest.json``, ``parity.json`` and the model artifacts.
The manifest records everything a runtime needs without torch: the model configuration (for
information), the PreprocessSpec, the label names, the model's input and output tensors (the
same for every artifact: FP16 and INT8 graphs keep float32 inputs and outputs), and for each
artifact its format, precision, sha256, size and, for TensorRT engines, the fingerprint of the
machine that built it.

Layout of ``manifest.json`` (schema 1)::

    {"schema": 1, "edgeseg_version": "0.1.0", "created": "2026-11-24T20:00:00Z",
     "model": {...ModelConfig...}, "spec": {...PreprocessSpec...},
     "labels": {"0": "background", "1": "liver"},
     "postprocess": {"resize": "logits", "classes": {"1": {"keep_largest": true, ...}}},
     "inputs":  [{"name": "image",  "shape": [-1, 1, 256, 256], "dtype": "float32"}],
     "outputs": [{"name": "logits", "shape": [-1, 2, 256, 256], "dtype": "float32"}],
     "max_batch": 8, "resize_input": true,
     "artifacts": [{"file": "model.onnx", "format": "onnx", "precision": "fp32",
                    "sha256": "...", "bytes": 123, "fingerprint": null,
                    "scored": ["onnxruntime", "openvino"],
                    "excluded": {"openvino": "dice drop 0.0062 > 0.005"}}],  # excluded: optional
     "calibration": null | {...}, "source": {...}, "training_fov": null | {"fov_mm": [300.0, 450.0], ...}}

``scored`` lists the runners the parity gate ran on the artifact (passed or failed); ``auto``
runs an artifact only on a runner it lists and does not exclude. An entry without it was written
before the manifest recorded them: ``auto`` reads them from parity.json's rows where those are this
bundle's (``edgeseg.runtime.parity_record``; ``edgeseg gate`` records the list, see docs/export.md).

``training_fov`` (null or absent: unknown): ``edgeseg.data.field_of_view``. ``-1`` in a shape is the dynamic
batch axis. ``resize_input`` false: slices of another size than the spec's are refused. Readers refuse a newer schema,
unknown formats and precisions no runner loads (the Runner classes say which, see ``edgeseg.runtime.runners``), and
(``verify_artifacts``) missing files, files whose sha256 differs, ONNX graphs that keep a tensor in another file,
which no sha256 covers, and files that resolve outside the bundle folder (``edgeseg.runtime.bundle_files``).
``Manifest.sha256`` (of the bytes read) is the bundle's identity in outputs' provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeseg.data.field_of_view import TrainingFov, parse_training_fov
from edgeseg.errors import BundleError, SpecError, shown
from edgeseg.runtime.bundle_files import check_inside_bundle, read_bundle_json_bytes, sha256_file
from edgeseg.runtime.manifest_entries import ArtifactEntry, TensorInfo, is_manifest_int, manifest_object
from edgeseg.runtime.onnx_form import check_self_contained
from edgeseg.runtime.postprocess_options import check_regions_entry
from edgeseg.spec import PreprocessSpec

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
PARITY_NAME = "parity.json"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
MAX_CLASS = 255  # labels are uint8
MAX_BATCH = 1 << 20  # libedgeseg's ES_MAX_BATCH; a larger one is no model's limit, only a large buffer


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a bundle."""

    spec: PreprocessSpec
    labels: dict[int, str]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    artifacts: tuple[ArtifactEntry, ...]
    model: dict[str, Any] = field(default_factory=dict)
    postprocess: dict[str, Any] = field(default_factory=dict)
    max_batch: int = 1
    resize_input: bool = True
    calibration: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    edgeseg_version: str = ""
    created: str = ""
    schema: int = SCHEMA_VERSION
    training_fov: TrainingFov | None = None  # the training cases' field of view, where known
    sha256: str = field(default="", compare=False)  # of manifest.json as read; not a field of the file

    def __post_init__(self) -> None:
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise BundleError(f"a bundle model has one input and one output, got {len(self.inputs)} and {len(self.outputs)}")
        # TensorRT engines are per GPU architecture, so one bundle may hold several of a precision
        keys = [(a.key, (a.fingerprint or {}).get("compute_capability") if a.format == "tensorrt" else None)
                for a in self.artifacts]
        if len(set(keys)) != len(keys):
            raise BundleError(f"two artifacts share a format and precision: {[a.key for a in self.artifacts]}")
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise BundleError(f"max_batch must be a whole number from 1 to {MAX_BATCH}, got {self.max_batch}")
        if self.inputs[0].shape[0] > self.max_batch:  # a fixed batch the runtime could never send
            raise BundleError(f"input has a fixed batch of {self.inputs[0].shape[0]}, above max_batch {self.max_batch}")
        if 0 not in self.labels:
            raise BundleError(f"labels must name class 0 (background), got {self.labels}")
        check_regions_entry(self.model.get("regions") if isinstance(self.model, dict) else None, max(self.labels) + 1)
        # the network's tensors as network_tensors writes them: what the runtime feeds and reads
        rows, cols = self.spec.size
        for tensor, channels, what in ((self.inputs[0], 1, "1 channel"),
                                       (self.outputs[0], self.num_classes, f"{self.num_classes} classes (labels)")):
            if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != (channels, rows, cols):
                raise BundleError(f"tensor {shown(tensor.name)} has shape {list(tensor.shape)}; the spec and labels say "
                                  f"[-1, {channels}, {rows}, {cols}] ({what} of {rows}x{cols})")

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    @property
    def regions(self) -> bool:
        """Whether the model is a region model (its outputs are scores of sigmoid regions)."""
        return isinstance(self.model, dict) and self.model.get("regions") is not None

    def artifact(self, fmt: str, precision: str) -> ArtifactEntry | None:
        """The artifact of that format and precision, or None."""
        for entry in self.artifacts:
            if entry.format == fmt and entry.precision == precision:
                return entry
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "edgeseg_version": self.edgeseg_version,
            "created": self.created,
            "model": self.model,
            "spec": self.spec.to_dict(),
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "postprocess": self.postprocess,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "max_batch": self.max_batch,
            "resize_input": self.resize_input,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "calibration": self.calibration,
            "source": self.source,
            "training_fov": None if self.training_fov is None else self.training_fov.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        if not isinstance(data, dict):
            raise BundleError(f"manifest must be a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        if not is_manifest_int(schema):
            raise BundleError(f"manifest has no integer 'schema' field (got {shown(schema)})")
        if schema > SCHEMA_VERSION:
            raise BundleError(f"manifest schema {schema} is newer than this edgeseg reads ({SCHEMA_VERSION}); upgrade edgeseg")
        if schema < 1:
            raise BundleError(f"manifest schema {schema} is not valid")
        missing = sorted({"spec", "labels", "inputs", "outputs", "artifacts"} - set(data))
        if missing:
            raise BundleError(f"manifest lacks {missing}")
        try:
            spec = PreprocessSpec.from_dict(data["spec"])
        except SpecError as exc:
            raise BundleError(f"manifest spec: {exc}") from None
        raw = data["labels"]
        if (not isinstance(raw, dict) or not all(isinstance(k, str) and k.isascii() and k.isdigit() for k in raw)
                or not all(isinstance(v, str) for v in raw.values())):
            raise BundleError(f"manifest labels must map class numbers to names, got {shown(raw)}")
        labels = {int(k): v for k, v in raw.items()}
        if len(labels) != len(raw):  # "1" and "01"
            raise BundleError(f"manifest labels name a class twice: {sorted(raw)}")
        if max(labels, default=0) > MAX_CLASS:
            raise BundleError(f"manifest labels: class {max(labels)} does not fit uint8 labels (at most {MAX_CLASS + 1} classes)")
        try:
            return cls._build(data, spec, labels, schema)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            # A field of the wrong type (a list for a dict, text for a number) is a bad manifest.
            raise BundleError(f"manifest has a field of the wrong type or value ({' '.join(str(exc).split())[:200]})") from None

    @classmethod
    def _build(cls, data: dict[str, Any], spec: PreprocessSpec, labels: dict[int, str], schema: int) -> "Manifest":
        return cls(
            spec=spec,
            labels=labels,
            inputs=tuple(TensorInfo.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorInfo.from_dict(t) for t in data["outputs"]),
            artifacts=tuple(ArtifactEntry.from_dict(a) for a in data["artifacts"]),
            model=manifest_object(data, "model"),
            postprocess=manifest_object(data, "postprocess"),
            max_batch=_whole(data.get("max_batch", 1), "max_batch"),
            resize_input=_flag(data.get("resize_input", True), "resize_input"),
            calibration=data.get("calibration"),
            source=manifest_object(data, "source"),
            edgeseg_version=str(data.get("edgeseg_version", "")), created=str(data.get("created", "")),
            schema=schema,
            training_fov=parse_training_fov(data.get("training_fov"), BundleError),
        )


def _whole(value: Any, key: str) -> int:
    if not is_manifest_int(value):
        raise BundleError(f"manifest {key} must be a whole number, got {shown(value)}")
    return value


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise BundleError(f"manifest {key} must be true or false, got {shown(value)}")
    return value


def network_tensors(spec: PreprocessSpec, num_classes: int) -> tuple[TensorInfo, TensorInfo]:
    """The network's input and output tensors as every export writes them: float32 ``image``
    (N, 1, H, W) and ``logits`` (N, num_classes, H, W), with a dynamic batch axis."""
    return (TensorInfo(INPUT_NAME, (-1, 1, *spec.size)), TensorInfo(OUTPUT_NAME, (-1, int(num_classes), *spec.size)))


def read_manifest(bundle: str | Path) -> Manifest:
    """Parse ``BUNDLE/manifest.json``; BundleError for a missing, unreadable or invalid one."""
    if not isinstance(bundle, (str, os.PathLike)):
        raise BundleError(f"a bundle is a folder path (str or os.PathLike), got {type(bundle).__name__}")
    folder = Path(bundle)
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} is not a directory")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"bundle {folder} has no {MANIFEST_NAME}")
    try:
        raw = read_bundle_json_bytes(path)
    except OSError as exc:
        raise BundleError(f"{path}: not readable JSON ({exc})") from None
    try:
        # a leading BOM is read past, as in C; NaN and Infinity are not JSON, and C refuses them
        data = json.loads(raw.decode("utf-8-sig"), parse_constant=refuse_json_constant)
    except RecursionError:  # '[[[[...' nests deeper than the parser recurses
        raise BundleError(f"{path} is not a readable manifest: JSON nested too deeply") from None
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError, refuse_json_constant
        raise BundleError(f"{path}: not readable JSON ({exc})") from None
    check_json_strings(data, path)
    return replace(Manifest.from_dict(data), sha256=hashlib.sha256(raw).hexdigest())  # the bytes parsed, not a re-read


def refuse_json_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def check_json_strings(data: Any, path: Path) -> None:
    """Refuse a string (key or value) of a bundle's JSON that the C runtime cannot read as this one does:
    a NUL character ends a C string (``"model.onnx\\u0000x"`` would name model.onnx there), and an
    unpaired surrogate (``"\\ud800"``) is no Unicode text, which its JSON parser refuses."""
    stack = [data]
    while stack:
        item = stack.pop()
        texts = [*item.keys(), *item.values()] if isinstance(item, dict) else item if isinstance(item, list) else [item]
        for text in texts:
            if isinstance(text, (dict, list)):
                stack.append(text)
            elif isinstance(text, str) and "\0" in text:
                raise BundleError(f"{path}: a manifest string holds a NUL character (\\u0000): {shown(text)}")
            elif isinstance(text, str) and not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise BundleError(f"{path}: not readable JSON (a string holds an unpaired surrogate: {shown(text)})") from None


def verify_artifacts(bundle: str | Path, manifest: Manifest, only: list[ArtifactEntry] | None = None) -> None:
    """Check that each artifact (or those in ``only``) exists with the recorded size and sha256."""
    folder = Path(bundle)
    for entry in manifest.artifacts if only is None else only:
        path = folder / entry.file
        check_inside_bundle(folder, entry.file)
        if not path.is_file():
            raise BundleError(f"bundle {folder}: artifact {entry.file} ({entry.key}) is missing")
        size = path.stat().st_size
        if size != entry.bytes:
            raise BundleError(f"bundle {folder}: {entry.file} is {size} bytes, manifest says {entry.bytes} (tampered or truncated)")
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise BundleError(f"bundle {folder}: sha256 of {entry.file} is {digest[:12]}..., manifest says {entry.sha256[:12]}... (tampered)")
        if entry.format == "onnx":
            check_self_contained(path, f"bundle {folder}: {entry.file}")
