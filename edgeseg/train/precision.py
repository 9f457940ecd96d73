"""Device and mixed-precision choice for training."""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has AMX tiles for bfloat16 (``amx_bf16`` in /proc/cpuinfo's flags).

    There bf16 autocast makes a U-Net training step about 2.5x faster than float32. AVX512-BF16
    alone is not enough: on a Xeon that exposes it without AMX, a base-32 U-Net step at 256²
    (batch 8, 2 threads) took 4.9 s under bf16 autocast and 3.5 s in float32 channels-last,
    because the casts and the float32 batch norm cost more than the bf16 dot products save.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.partition(":")[2].split()}
    return "amx_bf16" in flags


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` ("auto", "off", "bf16", "fp16") on ``device``, or None."""
    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None
