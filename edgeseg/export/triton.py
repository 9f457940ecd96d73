"""A Triton Inference Server model repository from a bundle.

``--kind KIND_GPU`` (default), for a GPU Triton with the ONNX Runtime and TensorRT backends:

- ``REPO/<name>/``: ``config.pbtxt`` + ``1/model.onnx`` (a byte-identical copy of the bundle's
  ONNX file of the chosen precision), platform ``onnxruntime_onnx``;
- ``REPO/<name>-trt/`` when the bundle holds TensorRT engines: ``platform: "tensorrt_plan"``,
  one engine per compute capability listed in ``cc_model_filenames``.

``--kind KIND_CPU``, for a Triton that has only the Python backend: ``REPO/<name>/`` serves the
network through the Python backend on edgeseg's runtime (ONNX Runtime on the same ONNX file).

Both kinds add ``REPO/<name>-pipeline/``, a Python-backend model taking CT values (``hu``
INT16, ``[N, H, W]``, and the optional ``spacing`` FP32 ``[3]``; not batched by Triton) and
returning ``labels`` UINT8 through edgeseg's Segmenter: C
pre-processing, the network, C post-processing, exactly as ``edgeseg predict`` and
``edgeseg serve``'s pipeline model. Python-backend models hold ``1/model.py`` (which puts
edgeseg on ``sys.path``, see ``edgeseg.serve.triton_python``) and ``1/bundle/`` (the manifest
and the one ONNX artifact). Every config is parsed with the ``ModelConfig`` protobuf shipped by
tritonclient before the repository is moved into place; flags are checked before anything is
written. ``--overwrite`` writes into an existing repository, replacing the models of the same name
(all or none, see ``edgeseg.export.triton_swap``) and keeping the others; never into a folder that is, holds or lies in the
bundle, or holds anything but model folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import shutil
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

from edgeseg.atomic import atomic_dir, check_output_folder, within
from edgeseg.errors import BundleError, DataError, require
from edgeseg.export.triton_swap import repository_lock, staged_swap
from edgeseg.runtime.manifest import Manifest, read_manifest, verify_artifacts
from edgeseg.staging import clean_leftovers

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8"}
# A model name is a directory name Triton and URLs take as is; the suffixes keep it under 100.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
PIPELINE_SUFFIX = "-pipeline"  # as edgeseg.serve.model_inputs.PIPELINE_SUFFIX (serve sits above export)
SPACING_INPUT = "spacing"  # as edgeseg.serve.model_inputs.SPACING_INPUT

log = logging.getLogger(__name__)

MODEL_PY = '''"""Triton Python-backend model written by `edgeseg triton`; see edgeseg.serve.triton_python."""

import sys

# The backend's stub runs its own Python, which does not see the environment edgeseg is installed in.
for _path in reversed({paths!r}):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from edgeseg.serve.triton_python import TritonPythonModel  # noqa: E402,F401
'''


def check_model_name(name: str) -> str:
    """``name`` if Triton accepts it as a model (directory) name, else DataError."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise DataError(f"model name {name!r} must be 1..80 letters, digits, '_', '.' or '-', starting with a "
                        "letter or digit (it names a directory and a URL path)")
    return name


def check_max_batch(max_batch: int | None, manifest: Manifest) -> int:
    """The max_batch_size to write: the bundle's when None; 0 means no batching, as in Triton."""
    if max_batch is None:
        return manifest.max_batch
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 0:
        raise DataError(f"--max-batch must be an integer >= 0 (0: no batching), got {max_batch!r}")
    if max_batch > manifest.max_batch:
        raise DataError(f"--max-batch {max_batch} exceeds the bundle's max_batch {manifest.max_batch} "
                        "(the largest batch its model was exported for)")
    return max_batch


def _quoted(value: str, what: str) -> str:
    """``value`` as a config.pbtxt string. Tensor and engine file names come from the bundle's
    manifest: a quote, backslash or control character in one could end the string early and
    write other fields of the config, so they are refused, not escaped."""
    if not value or any(c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise DataError(f"{what} {value!r} cannot be written into config.pbtxt: it is empty or holds a quote, "
                        "backslash or control character")
    return f'"{value}"'


def _tensor(name: str, datatype: str, dims: list[int], optional: bool = False) -> str:
    shape = ", ".join(str(n) for n in dims)
    flag = " optional: true" if optional else ""
    return f'  {{ name: {_quoted(name, "tensor name")} data_type: {datatype} dims: [ {shape} ]{flag} }}'


def _io(manifest: Manifest, max_batch: int) -> list[str]:
    """input/output blocks of the network; with max_batch 0 the batch axis is written as -1."""
    skip = 1 if max_batch else 0  # with batching, the batch axis is implied by max_batch_size

    def dims(info) -> list[int]:
        return [-1, *info.shape[1:]][skip:]

    return ["input [", _tensor(manifest.inputs[0].name, TRITON_TYPES[manifest.inputs[0].dtype], dims(manifest.inputs[0])),
            "]", "output [",
            _tensor(manifest.outputs[0].name, TRITON_TYPES[manifest.outputs[0].dtype], dims(manifest.outputs[0])), "]"]


def _scheduling(max_batch: int, kind: str, instances: int, max_delay_us: int) -> list[str]:
    lines = []
    if max_batch:
        preferred = sorted({b for b in (max_batch // 2, max_batch) if b >= 1})
        lines += ["dynamic_batching {", f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]",
                  f"  max_queue_delay_microseconds: {max_delay_us}", "}"]
    return lines + [f"instance_group [ {{ count: {instances} kind: {kind} }} ]"]


def _parameters(params: dict[str, str]) -> list[str]:
    return [f'parameters {{ key: {_quoted(k, "parameter")} value: {{ string_value: {_quoted(v, k)} }} }}'
            for k, v in params.items()]


def model_config(manifest: Manifest, name: str, platform: str, max_batch: int, kind: str, instances: int,
                 max_delay_us: int, engines: dict[str, str] | None = None) -> str:
    """The ``config.pbtxt`` text of the network for an ONNX Runtime or TensorRT backend; it names
    the bundle it came from (``edgeseg_manifest_sha256``) as the Python-backend models' do."""
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch}",
             *_io(manifest, max_batch), *_scheduling(max_batch, kind, instances, max_delay_us),
             *_parameters({"edgeseg_manifest_sha256": manifest.sha256})]
    if engines:
        first = sorted(engines)[0]
        lines.append(f'default_model_filename: {_quoted(engines[first], "engine file")}')
        lines += [f'cc_model_filenames {{ key: {_quoted(cc, "compute capability")} value: '
                  f'{_quoted(engines[cc], "engine file")} }}' for cc in sorted(engines)]
    return "\n".join(lines) + "\n"


def python_model_config(manifest: Manifest, name: str, role: str, max_batch: int, kind: str, instances: int,
                        max_delay_us: int, backend: str, tta: str = "none") -> str:
    """The ``config.pbtxt`` text of a Python-backend model: the network or the pipeline (which
    mirrors as ``tta`` says; the network is always one pass)."""
    params = {"edgeseg_role": role, "edgeseg_backend": backend, "edgeseg_max_slices": str(max_batch or manifest.max_batch),
              # the bundle's identity, which the model's trimmed copy of the manifest (one artifact) has not
              "edgeseg_manifest_sha256": manifest.sha256}
    if role == "network":
        io = _io(manifest, max_batch)
    else:
        # Not batched by Triton (max_batch_size 0): a batched model's every input carries the batch
        # axis, and a volume has one spacing, not one per slice. N stays at most edgeseg_max_slices;
        # each request is one volume anyway (its 3-D filters never span requests).
        max_batch = 0
        io = ["input [", _tensor("hu", "TYPE_INT16", [-1, -1, -1]) + ",",
              _tensor(SPACING_INPUT, "TYPE_FP32", [3], optional=True), "]",
              "output [", _tensor("labels", "TYPE_UINT8", [-1, -1, -1]), "]"]
    if role == "pipeline" and tta != "none":
        params["edgeseg_tta"] = tta
    lines = [f'name: "{name}"', 'backend: "python"', f"max_batch_size: {max_batch}", *io,
             *_scheduling(max_batch, kind, instances, max_delay_us), *_parameters(params)]
    return "\n".join(lines) + "\n"


def spacing_note(manifest: Manifest, name: str) -> str | None:
    """The line ``edgeseg triton`` prints where the pipeline needs the ``spacing`` input (a class
    removes 3-D components by mL), else None."""
    from edgeseg.runtime.postprocess_options import PostprocessOptions

    options = PostprocessOptions.from_dict(manifest.postprocess, max(manifest.labels, default=0) + 1)
    if not options.needs_spacing:
        return None
    return (f"{name}{PIPELINE_SUFFIX} removes 3-D components of {options.ml_filters(manifest.labels)}: every request "
            f"needs the input {SPACING_INPUT!r} (FP32, shape [3]: z, y, x in mm) and is refused without it")


def validate_config(text: str) -> None:
    """Parse ``text`` with Triton's ModelConfig protobuf; BundleError naming the parse error."""
    pb = require("tritonclient.grpc.model_config_pb2", "triton", "validating Triton model configs")
    text_format = require("google.protobuf.text_format", "triton", "validating Triton model configs")
    try:
        text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise BundleError(f"generated config.pbtxt does not parse as a Triton ModelConfig: {exc}") from None


def python_paths() -> list[str]:
    """Where this edgeseg and its dependencies are installed, for the generated model.py."""
    import edgeseg

    paths = [str(Path(edgeseg.__file__).resolve().parents[1]), sysconfig.get_paths()["purelib"],
             sysconfig.get_paths()["platlib"]]
    return list(dict.fromkeys(paths))


def _write_python_model(tmp: Path, name: str, config: str, bundle: Path, manifest: Manifest, onnx, paths) -> None:
    """``name/config.pbtxt``, ``name/1/model.py`` and ``name/1/bundle/`` (manifest + one ONNX file)."""
    validate_config(config)
    version = tmp / name / "1"
    (version / "bundle").mkdir(parents=True)
    (tmp / name / "config.pbtxt").write_text(config)
    (version / "model.py").write_text(MODEL_PY.format(paths=list(paths)))
    shutil.copyfile(bundle / onnx.file, version / "bundle" / onnx.file)
    (version / "bundle" / "manifest.json").write_text(dataclasses.replace(manifest, artifacts=(onnx,)).to_json())


def check_repo_backend(backend: str) -> str:
    """``backend`` if it names one runner the Python-backend models can load (its precision is
    --precision's), else a one-line DataError."""
    from edgeseg.runtime.runners import runner_class, runners_for
    from edgeseg.runtime.selection import parse_backend

    if not isinstance(backend, str) or backend.strip().lower() in ("", "auto") or "://" in backend or "," in backend:
        raise DataError(f"--backend must name one runner (onnxruntime, openvino, ...) for the repository's "
                        f"Python-backend models, got {backend!r}")
    runner, precision = parse_backend(backend)
    if precision is not None:
        raise DataError(f"--backend {backend!r}: give the runner alone; the precision is --precision's")
    fmt = runner_class(runner).format
    if fmt != "onnx":  # the models hold the ONNX graph alone: any other runner fails to load in Triton
        onnx_runners = ", ".join(cls.name for cls in runners_for("onnx"))
        raise DataError(f"--backend {runner} runs {fmt} artifacts; the repository's Python-backend models hold the "
                        f"bundle's ONNX graph: name one of {onnx_runners}")
    return runner


def serving_warnings(entry, name: str, kind: str, backend: str) -> list[str]:
    """Why ``auto`` would not run ``entry`` the way the repository's models do: the export gate's
    verdict on each runner they use (Triton's ONNX Runtime backend on a GPU for the network of a
    ``KIND_GPU`` repository, edgeseg's ``backend`` for the Python-backend models), and, for a CPU
    runner, the INT8 saturation risk of this machine's CPU (the Triton host's may differ). Naming a
    precision serves it anyway, as naming a backend does in the runtime; these say what it costs."""
    from edgeseg.runtime.selection import int8_saturation_risk, runner_class, unscored_reason

    runner = check_repo_backend(backend)
    network = "onnxruntime-gpu" if kind == "KIND_GPU" else runner
    uses = {network: [name]}
    uses.setdefault(runner, []).append(name + PIPELINE_SUFFIX)
    warnings = []
    for used, models in uses.items():
        served = f"{' and '.join(models)} run{'s' if len(models) == 1 else ''} {entry.file} on {used}"
        risk = int8_saturation_risk(entry) if runner_class(used).device_kind == "cpu" else None
        if used in entry.excluded:
            warnings.append(f"{served}, which the export gate excluded ({entry.excluded[used]}); auto never picks it")
        elif unscored_reason(entry, used):
            warnings.append(f"{served}, which auto never picks: {unscored_reason(entry, used)}")
        elif risk:
            warnings.append(f"{served}: {risk} (this machine's CPU; check the Triton host's)")
    return warnings


def _not_a_model(folder: Path, strict: bool) -> str | None:
    """What in ``folder`` shows it is not a model folder, or None. Any model holds
    ``config.pbtxt``; ``strict`` (a model about to be replaced) also allows only what edgeseg
    writes there: numbered version folders, no links."""
    if (strict and folder.is_symlink()) or not folder.is_dir() or not (folder / "config.pbtxt").is_file():
        return folder.name
    for item in sorted(folder.iterdir()) if strict else ():
        if item.is_symlink() or not ((item.is_dir() and item.name.isdigit()) or item.name == "config.pbtxt"):
            return f"{folder.name}/{item.name}"
    return None


def repo_model_names(name: str) -> tuple[str, ...]:
    """The model folders a repository written for model ``name`` may hold."""
    return name, name + PIPELINE_SUFFIX, f"{name}-trt"


def check_repo_output(repo: str | Path, force: bool, bundle: str | Path, what: str = "REPO",
                      keep: tuple[tuple[str, str | Path], ...] = (), name: str = "edgeseg") -> Path:
    """Refuse, before any work, a repository folder whose writing would destroy something: one
    that is, holds or lies in ``bundle``, holds a ``keep`` folder (``(what, path)``), exists
    without ``force``, or is not a Triton repository. ``--overwrite`` writes into an existing
    repository: it replaces the models named after ``name`` and leaves the others alone."""
    repo = Path(repo)
    where, source = repo.resolve(), Path(bundle).resolve()
    if within(where, source) or within(source, where):
        relation = "is" if where == source else "holds" if within(source, where) else "lies inside"
        raise DataError(f"{what} {repo} {relation} the bundle {bundle}; name a folder apart from it")
    for label, folder in keep:
        if within(folder, where):
            raise DataError(f"{what} {repo} {'is' if Path(folder).resolve() == where else 'holds'} {label} {folder}; "
                            "name a folder apart from it")
    if not repo.exists():
        return repo
    if not force:
        first, second, third = repo_model_names(name)
        raise DataError(f"{what} {repo} exists; pass --overwrite to write into it (its models {first}, {second} and "
                        f"{third} are replaced, the others kept)")
    if not repo.is_dir():
        raise DataError(f"{what} {repo} exists and is not a folder")
    ours = repo_model_names(name)
    for model in sorted(repo.iterdir()):
        foreign = _not_a_model(model, strict=model.name in ours)
        if foreign is not None:
            raise DataError(f"{what} {repo} is not a Triton model repository: it holds {foreign}, not a model folder "
                            "(config.pbtxt and version folders); refusing to write into it")
    check_output_folder(repo, what)
    return repo


@contextlib.contextmanager
def _into_repository(repo: Path, replaced: tuple[str, ...], check: Callable[[], object]) -> Iterator[Path]:
    """Yield a staging folder for model folders. A new ``repo`` is written whole; into an
    existing one they land all or none, replacing their namesakes, and the models ``replaced``
    that were not staged (an earlier bundle's TensorRT model) are taken out
    (edgeseg.export.triton_swap); its other models are kept. Another run on ``repo`` is waited
    for, then ``check`` refuses what it may have changed (say, created ``repo`` meanwhile)."""
    # waiting is what the run is doing, not something wrong: an info line, as progress is
    with repository_lock(repo, lambda note: log.info("%s", note)):
        check()
        if not repo.exists():
            with atomic_dir(repo) as tmp:
                yield tmp
            return
        clean_leftovers(repo)  # staging folders of edgeseg versions that replaced models one by one
        with staged_swap(repo, replaced) as tmp:
            yield tmp


def write_triton_repo(bundle: str | Path, repo: str | Path, *, name: str = "edgeseg", precision: str = "fp32",
                      max_batch: int | None = None, kind: str = "KIND_GPU", instances: int = 1,
                      max_delay_us: int = 2000, force: bool = False, backend: str = "onnxruntime",
                      paths: list[str] | None = None, tta: str = "none") -> list[Path]:
    """Write the Triton repository for ``bundle`` to ``repo`` atomically; return the model folders.

    ``backend`` is the edgeseg runtime backend the Python-backend models run the network with
    (its precision is ``precision``); ``paths`` go on the models' ``sys.path`` (default: where
    this edgeseg and its dependencies are installed); ``tta`` is the pipeline's test-time
    mirroring (edgeseg.runtime.tta)."""
    from edgeseg.runtime.tta import check_tta

    bundle, repo = Path(bundle), Path(repo)
    check_model_name(name)
    check_tta(tta)
    backend = check_repo_backend(backend)  # its canonical name goes into the models' configs
    if kind not in ("KIND_GPU", "KIND_CPU"):
        raise DataError(f"instance kind must be KIND_GPU or KIND_CPU, got {kind!r}")
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        raise DataError(f"--instances must be an integer >= 1, got {instances!r}")
    check_repo_output(repo, force, bundle, name=name)
    manifest = read_manifest(bundle)
    batch = check_max_batch(max_batch, manifest)
    verify_artifacts(bundle, manifest)
    onnx = manifest.artifact("onnx", precision)
    if onnx is None:
        have = sorted(a.key for a in manifest.artifacts)
        raise BundleError(f"bundle {bundle} has no onnx-{precision} artifact (it has {have})")
    runtime = f"{backend}:{precision}"
    paths = python_paths() if paths is None else list(paths)
    engines = {a.fingerprint["compute_capability"]: a for a in manifest.artifacts
               if a.format == "tensorrt" and a.precision == precision and a.fingerprint}
    models: list[Path] = []
    check = functools.partial(check_repo_output, repo, force, bundle, name=name)
    with _into_repository(repo, repo_model_names(name), check) as tmp:
        if kind == "KIND_CPU":
            text = python_model_config(manifest, name, "network", batch, kind, instances, max_delay_us, runtime)
            _write_python_model(tmp, name, text, bundle, manifest, onnx, paths)
        else:
            text = model_config(manifest, name, "onnxruntime_onnx", batch, kind, instances, max_delay_us)
            validate_config(text)
            (tmp / name / "1").mkdir(parents=True)
            (tmp / name / "config.pbtxt").write_text(text)
            shutil.copyfile(bundle / onnx.file, tmp / name / "1" / "model.onnx")
        models.append(repo / name)
        pipeline = name + PIPELINE_SUFFIX
        text = python_model_config(manifest, pipeline, "pipeline", batch, kind, instances, max_delay_us, runtime, tta)
        _write_python_model(tmp, pipeline, text, bundle, manifest, onnx, paths)
        models.append(repo / pipeline)
        if engines and kind == "KIND_GPU":  # TensorRT needs a GPU: a CPU repository must load without it
            trt_name = f"{name}-trt"
            files = {cc: entry.file for cc, entry in engines.items()}
            text = model_config(manifest, trt_name, "tensorrt_plan", batch, "KIND_GPU", instances, max_delay_us, files)
            validate_config(text)
            (tmp / trt_name / "1").mkdir(parents=True)
            (tmp / trt_name / "config.pbtxt").write_text(text)
            for entry in engines.values():
                shutil.copyfile(bundle / entry.file, tmp / trt_name / "1" / entry.file)
            models.append(repo / trt_name)
    from edgeseg.runtime.parity_record import with_parity_record  # auto's record of a manifest without scored

    gated = next(e for e in with_parity_record(bundle, manifest).artifacts if e.file == onnx.file)
    for warning in serving_warnings(gated, name, kind, backend):  # about the repository written, so after it is
        log.warning("%s", warning)
    return models
