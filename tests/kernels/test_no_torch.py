"""edgeseg.kernels must import and run where torch cannot be imported (the runtime is torch-free)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_kernels_run_without_torch(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        class _NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, _NoTorch())
        import numpy as np
        import edgeseg.kernels as k
        import edgeseg.bench.kernels  # the benchmark script imports torch lazily, if at all
        from edgeseg.spec import PreprocessSpec
        out = k.preprocess(np.zeros((8, 8), np.int16), PreprocessSpec(size=(4, 4)))
        assert out.shape == (1, 1, 4, 4)
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
