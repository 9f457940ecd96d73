"""The runtime and ``edgeseg predict`` predict where torch cannot be imported, and load nothing heavy
(tests/test_no_torch.py checks that every torch-free module imports)."""

from __future__ import annotations

import textwrap

import numpy as np


def test_runtime_predicts_without_torch(bundle_dir, tmp_path, python_without):
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import importlib.util
        try:
            importlib.util.find_spec("torch")
        except ImportError:
            blocked = True
        else:
            blocked = False
        if not blocked:
            raise SystemExit("the torch blocker is not active")
        import edgeseg.bench.runtime
        from edgeseg.errors import MissingDependencyError
        from edgeseg.runtime import Segmenter
        with Segmenter.load({str(bundle_dir)!r}) as seg:
            labels = seg.predict(np.full((70, 50), -1000, np.int16))
        assert labels.shape == (70, 50), labels.shape
        try:
            Segmenter.load({str(bundle_dir)!r}, backend="torchscript")
        except MissingDependencyError as exc:
            print(exc)
        from edgeseg.cli.main import cli
        cli.main(["predict", {str(bundle_dir)!r}, "in.npy", "--out", "out.npy", "--quiet"], standalone_mode=False)
        heavy = sorted(m for m in ("torch", "scipy", "matplotlib", "pydicom", "nibabel", "highdicom") if m in sys.modules)
        print("heavy:", heavy)
    """)
    np.save(tmp_path / "in.npy", np.full((3, 40, 40), -1000, np.int16))
    done = python_without(["-c", script], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "the TorchScript backend needs the 'torch' package: pip install 'edgeseg[train]'" in lines[0]
    assert lines[-1] == "heavy: []"
    assert np.load(tmp_path / "out.npy").shape == (3, 40, 40)


def test_predict_command_without_torch(bundle_dir, tmp_path, python_without):
    np.save(tmp_path / "in.npy", np.full((2, 40, 40), -1000, np.int16))
    done = python_without(["-m", "edgeseg.cli", "predict", str(bundle_dir), "in.npy", "--out", "out.nii.gz"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "in: 2 slices, backend " in done.stdout
    assert (tmp_path / "out.nii.gz").is_file()
    done = python_without(["-m", "edgeseg.cli", "predict", str(bundle_dir), "in.npy", "--out", "ts.npy",
                 "--backend", "torchscript", "--quiet"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("edgeseg: error: the TorchScript backend needs the 'torch' package: "
                                   "pip install 'edgeseg[train]'")
    assert not (tmp_path / "ts.npy").exists()
