"""A Triton Inference Server model repository from a bundle.

``REPO/<name>/config.pbtxt`` + ``REPO/<name>/1/model.onnx`` (a byte-identical copy of the
bundle's ONNX file of the chosen precision) for the ONNX Runtime backend, and, when the bundle
holds TensorRT engines, ``REPO/<name>-trt/`` with ``platform: "tensorrt_plan"`` and one engine
per compute capability listed in ``cc_model_filenames``. Triton receives the pre-processed NCHW
tensor, exactly as ``edgeseg serve`` does; the client runs edgeseg's C pre-processing.
Each config is parsed with the ``ModelConfig`` protobuf shipped by tritonclient before the
repository is moved into place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeseg.atomic import atomic_dir
from edgeseg.errors import BundleError, DataError, require
from edgeseg.runtime.manifest import Manifest, read_manifest, verify_artifacts

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8"}


def _tensor(info) -> str:
    dims = ", ".join(str(n) for n in info.shape[1:])  # the batch axis is implied by max_batch_size
    return f'  {{ name: "{info.name}" data_type: {TRITON_TYPES[info.dtype]} dims: [ {dims} ] }}'


def model_config(manifest: Manifest, name: str, platform: str, max_batch: int, kind: str, instances: int,
                 max_delay_us: int, engines: dict[str, str] | None = None) -> str:
    """The ``config.pbtxt`` text of one model."""
    preferred = sorted({b for b in (max_batch // 2, max_batch) if b >= 1})
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        "input [",
        _tensor(manifest.inputs[0]),
        "]",
        "output [",
        _tensor(manifest.outputs[0]),
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]",
        f"  max_queue_delay_microseconds: {max_delay_us}",
        "}",
        f"instance_group [ {{ count: {instances} kind: {kind} }} ]",
    ]
    if engines:
        first = sorted(engines)[0]
        lines.append(f'default_model_filename: "{engines[first]}"')
        lines += [f'cc_model_filenames {{ key: "{cc}" value: "{engines[cc]}" }}' for cc in sorted(engines)]
    return "\n".join(lines) + "\n"


def validate_config(text: str) -> None:
    """Parse ``text`` with Triton's ModelConfig protobuf; BundleError naming the parse error."""
    pb = require("tritonclient.grpc.model_config_pb2", "dev", "validating Triton model configs")
    text_format = require("google.protobuf.text_format", "dev", "validating Triton model configs")
    try:
        text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise BundleError(f"generated config.pbtxt does not parse as a Triton ModelConfig: {exc}") from None


def write_triton_repo(bundle: str | Path, repo: str | Path, *, name: str = "edgeseg", precision: str = "fp32",
                      max_batch: int | None = None, kind: str = "KIND_GPU", instances: int = 1,
                      max_delay_us: int = 2000, force: bool = False) -> list[Path]:
    """Write the Triton repository for ``bundle`` to ``repo`` atomically; return the model folders."""
    bundle, repo = Path(bundle), Path(repo)
    manifest = read_manifest(bundle)
    verify_artifacts(bundle, manifest)
    onnx = manifest.artifact("onnx", precision)
    if onnx is None:
        have = sorted(a.key for a in manifest.artifacts)
        raise BundleError(f"bundle {bundle} has no onnx-{precision} artifact (it has {have})")
    if kind not in ("KIND_GPU", "KIND_CPU"):
        raise DataError(f"instance kind must be KIND_GPU or KIND_CPU, got {kind!r}")
    if repo.exists() and not force:
        raise DataError(f"{repo} exists; pass --force to replace it")
    batch = min(max_batch or manifest.max_batch, manifest.max_batch)
    engines = {a.fingerprint["compute_capability"]: a for a in manifest.artifacts
               if a.format == "tensorrt" and a.precision == precision and a.fingerprint}
    models: list[Path] = []
    with atomic_dir(repo) as tmp:
        text = model_config(manifest, name, "onnxruntime_onnx", batch, kind, instances, max_delay_us)
        validate_config(text)
        (tmp / name / "1").mkdir(parents=True)
        (tmp / name / "config.pbtxt").write_text(text)
        shutil.copyfile(bundle / onnx.file, tmp / name / "1" / "model.onnx")
        models.append(repo / name)
        if engines:
            trt_name = f"{name}-trt"
            files = {cc: entry.file for cc, entry in engines.items()}
            text = model_config(manifest, trt_name, "tensorrt_plan", batch, "KIND_GPU", instances, max_delay_us, files)
            validate_config(text)
            (tmp / trt_name / "1").mkdir(parents=True)
            (tmp / trt_name / "config.pbtxt").write_text(text)
            for entry in engines.values():
                shutil.copyfile(bundle / entry.file, tmp / trt_name / "1" / entry.file)
            models.append(repo / trt_name)
    return models
