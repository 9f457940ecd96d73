"""The memory format training runs in: channels-last or contiguous (NCHW), chosen per machine.

Which one is faster on a CPU depends on the CPU, not on the model: measured with
``benchmarks/bench_train_step.py`` (U-Net base 32, 256², batch 8, one thread), a Xeon with
AVX-512 ran a step 1.45x faster channels-last, an AMD EPYC with AVX2 only 1.32x faster
contiguous. ``auto`` therefore times a forward and backward pass in each format on the model
and batch about to be trained (a few steps' worth; training runs for thousands) and keeps the
faster. On CUDA it is channels-last without a probe (the layout tensor-core convolutions take).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F

MEMORY_FORMATS = ("auto", "channels-last", "contiguous")
_TORCH = {"channels-last": torch.channels_last, "contiguous": torch.contiguous_format}

# A step shorter than this (its first, warm-up pass) is not probed: the saving could not pay
# for the probe, and timings that short are mostly noise. Channels-last is kept there.
MIN_PROBED_STEP_S = 0.25
# Contiguous is taken only when it is faster by more than this share, so that noise between
# two nearly equal formats keeps the long-standing default.
MARGIN = 0.10


def torch_format(name: str) -> torch.memory_format:
    """The torch memory format of a concrete name (not "auto")."""
    return _TORCH[name]


def pick_format(times: dict[str, list[float]], margin: float = MARGIN) -> str:
    """Contiguous when its fastest pass beats channels-last's fastest by more than ``margin``."""
    best = {name: min(values) for name, values in times.items()}
    return "contiguous" if best["contiguous"] < (1.0 - margin) * best["channels-last"] else "channels-last"


def probe_memory_format(model: torch.nn.Module, batch: int, size: int, num_classes: int, device: torch.device,
                        amp_dtype: torch.dtype | None = None, rounds: int = 2,
                        min_step_s: float = MIN_PROBED_STEP_S) -> tuple[str, dict[str, Any]]:
    """Time forward + backward passes of copies of ``model`` in each format, alternating;
    returns the chosen format and what was measured (seconds per pass, or why none were).

    ``model`` itself, its gradients and every random-number generator are left as they were.
    """
    if device.type != "cpu":
        return "channels-last", {"reason": f"not probed on {device.type}"}
    with torch.random.fork_rng(devices=[]):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 1, size, size, generator=gen)
        y = torch.randint(0, num_classes, (batch, size, size), generator=gen)
        copies = {name: copy.deepcopy(model).to(memory_format=fmt).train() for name, fmt in _TORCH.items()}

        def one_pass(name: str) -> float:
            net, inputs = copies[name], x.contiguous(memory_format=_TORCH[name])
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = net(inputs)
            F.cross_entropy(logits.float(), y).backward()
            net.zero_grad(set_to_none=True)
            return time.perf_counter() - started

        first = one_pass("channels-last")  # also the warm-up of that format
        if first < min_step_s:
            return "channels-last", {"reason": f"a step takes {first:.3f} s, under {min_step_s} s: not probed"}
        one_pass("contiguous")  # its warm-up
        times: dict[str, list[float]] = {name: [] for name in _TORCH}
        for turn in range(rounds):  # alternate, so that load on the machine hits both alike
            for name in (("contiguous", "channels-last") if turn % 2 else ("channels-last", "contiguous")):
                times[name].append(one_pass(name))
    return pick_format(times), {"seconds_per_pass": {name: [round(t, 4) for t in v] for name, v in times.items()}}
