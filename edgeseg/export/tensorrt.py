"""TensorRT engines from the bundle's ONNX graphs, for TensorRT 10 and 11.

Precision lives in the ONNX graph (``model.fp16.onnx`` converted to float16, ``model.int8.onnx``
with Q/DQ nodes), so the engine for a precision is always built from that precision's ONNX file.
What differs between the two major versions is how the builder is told:

* TensorRT 10 builds a weakly typed network and needs the precision enabled by builder flags:
  ``FP16`` for the float16 graph, ``INT8`` for the Q/DQ graph (explicit quantisation; no
  calibrator).
* TensorRT 11 builds strongly typed networks only and has no precision flags and no
  ``IInt8Calibrator``: the tensor types of the ONNX graph decide.

``plan_build`` turns (TensorRT version, precision) into that decision and is tested without a
GPU; ``build_engine`` applies it with the ``tensorrt`` Python API. Every build reuses a timing
cache file, and ``trtexec_command`` writes the equivalent command line for devices without Python.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from edgeseg.atomic import atomic_write_bytes
from edgeseg.errors import BackendError, EdgesegError, require

SUPPORTED_MAJORS = (10, 11)
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
WORKSPACE_BYTES = 2 << 30


@dataclass(frozen=True)
class BuildPlan:
    """What to ask the TensorRT builder for, decided without touching a GPU."""

    major: int
    precision: str
    onnx_file: str
    builder_flags: tuple[str, ...]
    strongly_typed: bool
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]


def trt_major(version: str) -> int:
    """Major version from a TensorRT version string such as ``'10.13.3.9'``; BackendError if unsupported."""
    match = re.match(r"\s*(\d+)\.", str(version))
    if not match:
        raise BackendError(f"cannot read a TensorRT version from {version!r}")
    major = int(match.group(1))
    if major not in SUPPORTED_MAJORS:
        raise BackendError(f"TensorRT {version} is not supported; edgeseg builds engines with TensorRT {SUPPORTED_MAJORS}")
    return major


def plan_build(version: str, precision: str, chw: tuple[int, int, int], max_batch: int) -> BuildPlan:
    """The builder settings for ``precision`` on TensorRT ``version``, with a 1..max_batch profile."""
    if precision not in ONNX_FILES:
        raise BackendError(f"no TensorRT build for precision {precision!r}; choose one of {sorted(ONNX_FILES)}")
    if max_batch < 1:
        raise BackendError(f"max batch must be >= 1, got {max_batch}")
    major = trt_major(version)
    if major >= 11:
        flags: tuple[str, ...] = ()
        strongly_typed = True
    else:
        flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision]
        strongly_typed = False
    c, h, w = (int(n) for n in chw)
    opt = max(1, max_batch // 2)
    return BuildPlan(major=major, precision=precision, onnx_file=ONNX_FILES[precision], builder_flags=flags,
                     strongly_typed=strongly_typed, min_shape=(1, c, h, w), opt_shape=(opt, c, h, w),
                     max_shape=(max_batch, c, h, w))


def engine_file_name(precision: str, compute_capability: str) -> str:
    """``model.<precision>.sm<cc>.plan``: one engine per precision and GPU architecture."""
    return f"model.{precision}.sm{compute_capability.replace('.', '')}.plan"


def _shape_arg(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def trtexec_command(plan: BuildPlan, input_name: str, engine_file: str, timing_cache: str = "timing.cache") -> str:
    """The ``trtexec`` command that builds the same engine as ``build_engine`` from the bundle's ONNX."""
    args = ["trtexec", f"--onnx={plan.onnx_file}", f"--saveEngine={engine_file}",
            f"--minShapes={input_name}:{_shape_arg(plan.min_shape)}",
            f"--optShapes={input_name}:{_shape_arg(plan.opt_shape)}",
            f"--maxShapes={input_name}:{_shape_arg(plan.max_shape)}",
            f"--timingCacheFile={timing_cache}"]
    args += [f"--{flag.lower()}" for flag in plan.builder_flags]
    return shlex.join(args)


def machine_fingerprint() -> dict[str, str]:
    """GPU name, compute capability, TensorRT and CUDA runtime versions of device 0.

    Raises MissingDependencyError without tensorrt / cuda-python and BackendError without a GPU.
    """
    require("tensorrt", "tensorrt", "building TensorRT engines")
    from edgeseg.runtime.runners import tensorrt as trt_runner

    try:
        here = trt_runner.machine_fingerprint()
    except EdgesegError:
        raise
    except Exception as exc:  # cuda-python reports a missing driver or device in several ways
        raise BackendError(f"no usable CUDA GPU for TensorRT: {str(exc).splitlines()[0]}") from None
    runtime = trt_runner._cudart()
    err, version = runtime.cudaRuntimeGetVersion()
    if int(err) == 0:
        here["cuda"] = f"{version // 1000}.{(version % 1000) // 10}"
    return dict(here)


def build_engine(onnx_path: str | Path, engine_path: str | Path, plan: BuildPlan, input_name: str,
                 timing_cache: str | Path) -> dict[str, str]:
    """Build a serialized engine per ``plan`` and write it atomically; return its fingerprint.

    The timing cache at ``timing_cache`` is loaded when present and written back after the build,
    so later builds on the same GPU skip the tactic timing they already did.
    """
    trt = require("tensorrt", "tensorrt", "building TensorRT engines")
    fingerprint = machine_fingerprint()
    if trt_major(trt.__version__) != plan.major:
        raise BackendError(f"plan is for TensorRT {plan.major}, but tensorrt {trt.__version__} is installed")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are weakly typed by default; TensorRT 11 ones always strongly typed.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {Path(onnx_path).name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, plan.min_shape, plan.opt_shape, plan.max_shape)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {Path(onnx_path).name} ({plan.precision})")
    atomic_write_bytes(engine_path, bytes(serialized))
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return fingerprint
