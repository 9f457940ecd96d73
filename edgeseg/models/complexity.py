"""Parameters and floating-point operations of a model at a given input size.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of a
(1, in_channels, size, size) input: 2 per multiply-add of every convolution, transposed
convolution and matrix product (the layers that hold >99% of the work); batch norm, ReLU,
additions and bilinear resizing are not counted.
"""

from __future__ import annotations

from typing import Any

from edgeseg.models.registry import ModelConfig, build_model, count_parameters


def count_flops(model, in_channels: int, height: int, width: int) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass of ``model`` on one (height, width) slice."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_channels, height, width))
    return int(counter.get_total_flops())


def describe(config: ModelConfig, size: int) -> dict[str, Any]:
    """Name, parameter count and GFLOP per ``size`` x ``size`` slice of the model ``config`` builds."""
    model = build_model(config)
    model.check_input_size(size, size)
    flops = count_flops(model, config.in_channels, size, size)
    return {**config.to_dict(), "size": size, "params": count_parameters(model), "gflop": flops / 1e9}
