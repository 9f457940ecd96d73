"""The memory format training runs in: channels-last or contiguous (NCHW), chosen per machine.

Which one is faster on a CPU depends on the CPU: measured with ``benchmarks/bench_train_step.py``
(U-Net base 32, 256², batch 8, one thread), a Xeon with AVX-512 ran a step 1.45x faster
channels-last, an AVX2-only AMD EPYC 1.32x faster contiguous. ``auto`` therefore times forward
and backward passes in each format on the model and batch about to be trained (eight passes;
training runs for thousands) and keeps the faster. A resumed run on the same machine keeps
the format it was trained in, so it continues exactly. On CUDA, auto is channels-last without
a probe (the layout tensor-core convolutions take).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F

from edgeseg.train.config import MEMORY_FORMATS

_TORCH = {"channels-last": torch.channels_last, "contiguous": torch.contiguous_format}
assert tuple(_TORCH) == MEMORY_FORMATS[1:]

# A warm pass shorter than this is not probed, and channels-last is kept: timings that short
# swing with the machine's load (a test model's pass took 0.12-1.5 s on a loaded 2-core
# machine), so the choice would be noise, and runs that must repeat exactly (tests, seeded
# comparisons) would flip layouts between them.
MIN_PROBED_STEP_S = 0.25
# Contiguous is taken only when it is faster by more than this share, so that noise between
# two nearly equal formats keeps the long-standing default.
MARGIN = 0.10


def torch_format(name: str) -> torch.memory_format:
    """The torch memory format of a concrete name (not "auto")."""
    return _TORCH[name]


def pick_format(times: dict[str, list[float]], margin: float = MARGIN) -> str:
    """Contiguous when its fastest pass beats channels-last's fastest by more than ``margin``
    (load on the machine only ever slows a pass, so the fastest is the least disturbed)."""
    best = {name: min(values) for name, values in times.items()}
    return "contiguous" if best["contiguous"] < (1.0 - margin) * best["channels-last"] else "channels-last"


def probe_memory_format(model: torch.nn.Module, batch: int, size: int, num_classes: int, device: torch.device,
                        amp_dtype: torch.dtype | None = None, rounds: int = 2,
                        min_step_s: float | None = None) -> tuple[str, dict[str, Any]]:
    """Time forward + backward passes of copies of ``model`` in each format, alternating after a
    warm-up of each; returns the chosen format and what was measured (seconds per pass, or why
    nothing was). ``min_step_s`` defaults to :data:`MIN_PROBED_STEP_S`.

    ``model`` itself, its gradients and every random-number generator are left as they were.
    """
    min_step_s = MIN_PROBED_STEP_S if min_step_s is None else min_step_s
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

        one_pass("channels-last")  # warm-up: the first pass also creates the kernels' primitives
        warm = [one_pass("channels-last") for _ in range(2)]
        if min(warm) < min_step_s:
            return "channels-last", {"reason": f"a warm pass takes {min(warm):.3f} s, under {min_step_s} s: not probed"}
        one_pass("contiguous")
        times: dict[str, list[float]] = {"channels-last": warm, "contiguous": []}
        for turn in range(rounds):  # alternate, so that load on the machine hits both alike
            for name in (("contiguous", "channels-last") if turn % 2 == 0 else ("channels-last", "contiguous")):
                times[name].append(one_pass(name))
    return pick_format(times), {"seconds_per_pass": {name: [round(t, 4) for t in v] for name, v in times.items()}}


def choose_memory_format(requested: str, model: torch.nn.Module, batch: int, size: int, num_classes: int,
                         device: torch.device, amp_dtype: torch.dtype | None = None,
                         kept: dict[str, Any] | None = None, machine: str | None = None) -> dict[str, Any]:
    """The format to train in and why: ``requested`` when it is concrete; with "auto", the format
    a checkpoint was trained in (``kept``: its ``memory_format`` record) when it was trained on
    this ``machine``, else the probe's choice. Returns ``{"requested", "chosen", ...}``."""
    if requested != "auto":
        return {"requested": requested, "chosen": requested}
    if kept and kept.get("chosen") in _TORCH and machine is not None and kept.get("machine") == machine:
        return {"requested": "auto", "chosen": kept["chosen"], "reason": "kept from the checkpoint (same machine)"}
    chosen, measured = probe_memory_format(model, batch, size, num_classes, device, amp_dtype)
    return {"requested": "auto", "chosen": chosen, **measured}


def to_memory_format(model: torch.nn.Module, optimizer: torch.optim.Optimizer, name: str) -> None:
    """Put ``model``'s weights and ``optimizer``'s per-weight state (Adam's averages) in format
    ``name``, so that a run resumed in another format does not update mixed layouts."""
    fmt = _TORCH[name]
    model.to(memory_format=fmt)
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.ndim == 4:
                state[key] = value.contiguous(memory_format=fmt)
