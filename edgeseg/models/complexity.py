"""Parameters and floating-point operations of a model at a given input size.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of a
(1, in_channels, size, size) input: 2 per multiply-add of every convolution, transposed
convolution and matrix product (the layers that hold >99% of the work); batch norm, ReLU,
additions and bilinear resizing are not counted. The pass runs on torch's ``meta`` device:
shapes only, no memory, so any size can be described.
"""

from __future__ import annotations

from typing import Any

from edgeseg.models.registry import ModelConfig, build_model, count_parameters


def count_flops(model, in_channels: int, height: int, width: int) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass of ``model`` on one (height, width) slice,
    on the device the model's weights are on (``meta``: counted without computing)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    device = next(model.parameters()).device
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_channels, height, width, device=device))
    return int(counter.get_total_flops())


def _meta_model(config: ModelConfig):
    """The model ``config`` builds, with shapes but no weights in memory."""
    import torch

    with torch.device("meta"):
        return build_model(config)


def describe(config: ModelConfig, size: int) -> dict[str, Any]:
    """Name, parameter count and GFLOP per ``size`` x ``size`` slice of the model ``config`` builds."""
    model = _meta_model(config)
    model.check_input_size(size, size)
    flops = count_flops(model, config.in_channels, size, size)
    return {**config.to_dict(), "size": size, "params": count_parameters(model), "gflop": flops / 1e9}


def activation_bytes(config: ModelConfig, size: int, value_bytes: int = 4) -> int:
    """Bytes of the activations one (size x size) slice leaves for the backward pass, at
    ``value_bytes`` a value (4: float32; 2: under 16-bit autocast): the outputs of every leaf
    layer of one training-mode forward pass, counted on the meta device."""
    return _activation_bytes(_meta_model(config), config, size, value_bytes)


def _activation_bytes(model, config: ModelConfig, size: int, value_bytes: int) -> int:
    import torch

    model.train()
    total = 0

    def add(module, inputs, output) -> None:
        nonlocal total
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * value_bytes

    hooks = [m.register_forward_hook(add) for m in model.modules() if not list(m.children())]
    try:
        model(torch.zeros(1, config.in_channels, size, size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def check_trainable_here(config: ModelConfig, size: int | None = None, batch: int | None = None,
                         value_bytes: int = 4, device_memory: int | None = None) -> None:
    """EdgesegError when training the model ``config`` builds needs more memory than it has: its
    weights, their gradients and Adam's two moments, 16 bytes a parameter, and with ``size`` and
    ``batch`` a batch's activations (:func:`activation_bytes` at ``value_bytes``; torch would fail
    in its allocator, or the system would start killing). The memory is this machine's, or
    ``device_memory`` (a GPU's) where given."""
    import os

    from edgeseg.errors import EdgesegError

    model = _meta_model(config)
    params = count_parameters(model)
    where = "this GPU's" if device_memory else "this machine's"
    try:
        memory = device_memory or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if params * 16 > memory:
        raise EdgesegError(f"{config.name} base {config.base}, depth {config.depth} has {params:,} parameters: "
                           f"training it needs {params * 16 / 2**30:.0f} GiB for weights, gradients and optimiser "
                           f"state alone, more than {where} {memory / 2**30:.0f} GiB")
    if size is None or batch is None:
        return
    per_slice = _activation_bytes(model, config, size, value_bytes)
    if params * 16 + batch * per_slice > memory:
        raise EdgesegError(f"--batch-size {batch} at {size}x{size}: {config.name} base {config.base} keeps about "
                           f"{per_slice / 2**20:.0f} MiB of activations a slice, {batch * per_slice / 2**30:.1f} GiB a "
                           f"batch, more than {where} {memory / 2**30:.0f} GiB; give a smaller --batch-size")
