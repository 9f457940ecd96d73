"""``--deterministic``: torch's deterministic algorithms, cuDNN without autotuning, and cuBLAS
with a fixed workspace, for a training that repeats bit for bit on CUDA as it already does on
the CPU (docs/training.md, "What repeats exactly").

cuBLAS picks its reduction order by the workspace it has; ``CUBLAS_WORKSPACE_CONFIG`` fixes it,
but PyTorch reads the variable once, when the process first uses cuBLAS. So it is set here before
CUDA starts in the process (``train`` calls :func:`prepare_cublas` before it picks its device,
and ``edgeseg train --nproc`` before torchrun starts, whose processes inherit it); in a process
where CUDA already runs and the variable was not set, the setting cannot be honoured and is
refused.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

import torch

from edgeseg.errors import EdgesegError

CUBLAS_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
# The two settings NVIDIA documents for reproducible cuBLAS results; edgeseg sets the first.
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def prepare_cublas() -> None:
    """Set ``CUBLAS_WORKSPACE_CONFIG`` to ``:4096:8`` unless it already holds a deterministic
    setting; refuse where CUDA already runs in this process without one (too late to set)."""
    if os.environ.get(CUBLAS_VARIABLE) in CUBLAS_DETERMINISTIC:
        return
    if torch.cuda.is_initialized():
        raise EdgesegError(f"--deterministic needs {CUBLAS_VARIABLE}={CUBLAS_DETERMINISTIC[0]} before CUDA starts, and "
                           f"CUDA already runs in this process with {CUBLAS_VARIABLE}="
                           f"{os.environ.get(CUBLAS_VARIABLE, '(unset)')}; set it in the environment, or train in a "
                           "new process")
    os.environ[CUBLAS_VARIABLE] = CUBLAS_DETERMINISTIC[0]


def determinism_record() -> dict[str, Any]:
    """What this process's settings are, for the provenance: torch's deterministic algorithms,
    cuDNN's deterministic and benchmark flags, and the cuBLAS workspace setting."""
    return {"algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cublas_workspace_config": os.environ.get(CUBLAS_VARIABLE)}


@contextlib.contextmanager
def deterministic_mode(on: bool) -> Iterator[None]:
    """With ``on``, torch's deterministic algorithms and cuDNN deterministic without benchmark
    inside the block, and an operation that has no deterministic implementation on this device
    refused in one line; the settings before are put back after (cv trains fold after fold in
    one process). Without ``on``, the settings are left as they are."""
    if not on:
        yield
        return
    prepare_cublas()
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    except RuntimeError as exc:
        found = re.search(r"(\S+) does not have a deterministic implementation", str(exc))
        if found is None:
            raise
        raise EdgesegError(f"--deterministic: torch has no deterministic implementation of {found.group(1)}, which "
                           "this training needs on this device; train without --deterministic") from None
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
