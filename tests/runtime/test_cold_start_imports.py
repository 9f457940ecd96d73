"""What a process imports on its way to a first mask: only the engine it runs.

A cold start pays for every module it imports. These tests run ``Segmenter.load(...).predict``
in a fresh child process and read its ``sys.modules``: ``auto`` on OpenVINO imports neither
ONNX Runtime (its check for a GPU runner looks for the provider libraries first) nor
``openvino``'s package with its model converter (the runner loads only the runtime bindings),
and none of the standard-library modules only other paths need. A later ``import openvino``
in the same process still works in full, on the same bindings.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.runners.onnxruntime import _GPU_PROVIDERS, OnnxRuntimeRunner, gpu_provider_library_installed
from edgeseg.runtime.machine import installed_versions
from edgeseg.runtime.probe_cache import CACHE_NAME, probe_key
from edgeseg.runtime.runners import library_distributions

ROOT = Path(__file__).resolve().parents[2]
# Modules the path to a first mask on OpenVINO must not import (each was imported before).
NOT_IMPORTED = ("onnxruntime", "openvino", "openvino.tools", "openvino.tools.ovc", "torch", "http.client",
                "importlib.metadata", "subprocess", "numpy.ma")

FIRST_MASK = textwrap.dedent("""
    import json, sys
    import numpy as np
    from edgeseg.runtime import Segmenter
    seg = Segmenter.load(sys.argv[1], backend="auto")
    labels = seg.predict(np.full((70, 50), -1000, np.int16))
    print(json.dumps({"backend": seg.backend, "shape": list(labels.shape), "modules": sorted(sys.modules)}))
""")


def _child(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]), EDGESEG_CACHE_DIR=str(tmp_path / "cache"),
                   **env)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, env=environ)


def _first_mask(bundle: Path, tmp_path: Path, **env: str) -> dict:
    done = _child(["-c", FIRST_MASK, str(bundle)], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _imported_by_numpy() -> set[str]:
    """What ``import numpy`` alone imports of NOT_IMPORTED: numpy before 2.0 imports numpy.ma
    itself, which no path of edgeseg's can leave out (its floor, 1.24, is such a numpy)."""
    done = subprocess.run([sys.executable, "-c", "import sys, numpy; print(' '.join(sys.modules))"],
                          capture_output=True, text=True, check=True)
    return set(done.stdout.split()) & set(NOT_IMPORTED)


def _assert_openvino_only(result: dict, backend: str) -> None:
    assert result["backend"] == backend and result["shape"] == [70, 50]
    forbidden = set(NOT_IMPORTED) - _imported_by_numpy()
    imported = set(result["modules"])
    assert not imported & forbidden, sorted(imported & forbidden)


def test_auto_without_a_probe_on_openvino_imports_only_openvino_bindings(bundle_copy, tmp_path, cpu_only):
    # A bundle exported without INT8: OpenVINO FP32 comes first in auto's preference order.
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["precision"] == "fp32"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    (bundle_copy / "model.int8.onnx").unlink()
    _assert_openvino_only(_first_mask(bundle_copy, tmp_path, EDGESEG_BACKEND_PROBE="0"), "openvino:fp32")


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_auto_with_a_cached_probe_choice_imports_only_openvino_bindings(bundle_dir, tmp_path, cpu_only, precision):
    if "openvino" in read_manifest(bundle_dir).artifact("onnx", precision).excluded:
        pytest.skip(f"the export gate excluded OpenVINO on the test bundle's {precision} artifact: auto never picks it")
    cache = tmp_path / "cache"
    cache.mkdir()
    # The child computes the same key: same bundle, host, thread count and installed versions.
    (cache / CACHE_NAME).write_text(json.dumps({probe_key(bundle_dir, 0): {"choice": f"openvino:{precision}"}}))
    _assert_openvino_only(_first_mask(bundle_dir, tmp_path), f"openvino:{precision}")


def test_openvino_imported_after_the_runner_is_complete_and_shares_its_bindings(bundle_dir, tmp_path):
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from edgeseg.runtime import Segmenter
        seg = Segmenter.load(sys.argv[1], backend="openvino:fp32")
        batch = np.random.default_rng(0).random((2, *seg.runner.input_info.shape[1:]), dtype=np.float32)
        ours = seg.infer(batch)
        assert "openvino" not in sys.modules
        import openvino
        from openvino.tools.ovc import convert_model
        assert openvino.convert_model is convert_model
        # The package's own import found the runner's binding module in sys.modules and built on
        # it. (Before 2026.0 the package does not also bind it as its attribute ``_pyopenvino``.)
        bindings = sys.modules["openvino._pyopenvino"]
        assert bindings.InferRequest is type(seg.runner._request)
        assert issubclass(openvino.InferRequest, bindings.InferRequest) and issubclass(openvino.Core, bindings.Core)
        assert [i.get_any_name() for i in convert_model(sys.argv[1] + "/model.onnx").inputs] == ["image"]
        compiled = openvino.Core().compile_model(sys.argv[1] + "/model.onnx", "CPU",
                                                 {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
        theirs = compiled.create_infer_request().infer({0: batch})[compiled.output(0)]
        print("equal", bool(np.array_equal(ours, theirs)))
    """)
    done = _child(["-c", script, str(bundle_dir)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["equal", "True"]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_runner_logits_equal_openvinos_public_api(bundle_dir, precision):
    openvino = pytest.importorskip("openvino")
    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.runners.openvino import openvino_bindings

    assert openvino_bindings() is openvino._pyopenvino  # imported first: the runner takes that module
    manifest = read_manifest(bundle_dir)
    entry = manifest.artifact("onnx", precision)
    batch = np.random.default_rng(1).random((3, *manifest.inputs[0].shape[1:]), dtype=np.float32) * 2 - 0.5
    compiled = openvino.Core().compile_model(str(bundle_dir / entry.file), "CPU",
                                             {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    with Segmenter.load(bundle_dir, backend=f"openvino:{precision}") as seg:
        for rows in (3, 1, 2):  # batch sizes change between calls: the lent input tensor follows
            expected = request.infer({0: batch[:rows]})[compiled.output(0)]
            np.testing.assert_array_equal(seg.infer(batch[:rows]), expected)
        strided = np.ascontiguousarray(batch[:, :, ::-1])[:, :, ::-1]  # a non-contiguous view
        np.testing.assert_array_equal(seg.infer(strided), request.infer({0: batch})[compiled.output(0)])


def test_gpu_provider_check_agrees_with_onnxruntime_here():
    ort = pytest.importorskip("onnxruntime")
    offered = [p for p in _GPU_PROVIDERS if p in ort.get_available_providers()]
    assert OnnxRuntimeRunner.gpu_providers() == offered
    assert gpu_provider_library_installed() == bool(offered)


@pytest.mark.parametrize("with_library", [False, True])
def test_gpu_providers_ask_onnxruntime_only_where_a_provider_library_is_installed(tmp_path, with_library):
    # A stand-in onnxruntime package first on the path, offering CUDA when asked: with the CUDA
    # provider library among its files gpu_providers() asks it, without it nothing is imported.
    fake = tmp_path / "site" / "onnxruntime"
    (fake / "capi").mkdir(parents=True)
    (fake / "__init__.py").write_text("def get_available_providers():\n"
                                      "    return ['CUDAExecutionProvider', 'CPUExecutionProvider']\n")
    if with_library:
        (fake / "capi" / "libonnxruntime_providers_cuda.so").write_bytes(b"")
    script = ("import sys\n"
              "from edgeseg.runtime.runners.onnxruntime import OnnxRuntimeGpuRunner\n"
              "print(OnnxRuntimeGpuRunner.available(), OnnxRuntimeGpuRunner.gpu_providers(), 'onnxruntime' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), str(ROOT), *sys.path])))
    assert done.returncode == 0, done.stderr
    expected = "True ['CUDAExecutionProvider'] True" if with_library else "False [] False"
    assert done.stdout.strip() == expected


def test_installed_versions_match_importlib_metadata():
    import importlib.metadata

    names = (*library_distributions(), "numpy", "Pillow", "onnx", "edgeseg", "no-such-distribution-here")
    expected = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            expected[name] = importlib.metadata.version(name)
    assert installed_versions(names) == expected
    assert "numpy" in expected  # the comparison covered installed distributions
