"""Every module of the torch-free packages imports where torch cannot be imported.

The runtime side (spec, kernels, data, runtime, serve, and the metrics and report modules
they share with training) must install and run without torch; import-linter's forbidden
contract checks the import statements, this checks what really happens at import time.
"""

from __future__ import annotations

import textwrap

TORCH_FREE = ("edgeseg.errors", "edgeseg.progress", "edgeseg.choices", "edgeseg.file_values", "edgeseg.stopping", "edgeseg.staging", "edgeseg.atomic", "edgeseg.atomic_set", "edgeseg.limits", "edgeseg.spec", "edgeseg.kernels", "edgeseg.data", "edgeseg.runtime", "edgeseg.serve",
              "edgeseg.metrics", "edgeseg.report")

SCRIPT = textwrap.dedent("""
    import importlib, importlib.util, pkgutil, sys
    try:
        importlib.util.find_spec("torch")
    except ImportError:
        pass
    else:
        raise SystemExit("the torch blocker is not active")
    imported = []
    for name in {packages!r}:
        module = importlib.import_module(name)
        imported.append(name)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=name + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
    print("torch loaded:", "torch" in sys.modules)
    print("\\n".join(imported))
""")


def test_every_torch_free_module_imports_with_torch_blocked(tmp_path, python_without):
    done = python_without(["-c", SCRIPT.format(packages=TORCH_FREE)], tmp_path)
    assert done.returncode == 0, done.stderr
    first, *modules = done.stdout.strip().splitlines()
    assert first == "torch loaded: False"
    # The walk reached the modules that matter most (it is not vacuously empty).
    for name in ("edgeseg.runtime.segmenter", "edgeseg.runtime.runners.onnxruntime", "edgeseg.serve.app",
                 "edgeseg.data.slice_set", "edgeseg.data.store", "edgeseg.kernels.reference"):
        assert name in modules, modules
