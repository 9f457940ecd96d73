"""What every registered architecture shares: argument checks and the input-size rule."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgeseg.errors import ModelConfigError


def check_widths(in_channels: int, num_classes: int, base: int, depth: int) -> None:
    """Raise ModelConfigError naming the first field out of range."""
    if in_channels < 1:
        raise ModelConfigError(f"in_channels must be >= 1, got {in_channels}")
    # an architecture's outputs: softmax classes, or (regions) one sigmoid logit per region
    if num_classes < 1:
        raise ModelConfigError(f"num_classes (output channels) must be >= 1, got {num_classes}")
    if base < 1:
        raise ModelConfigError(f"base width must be >= 1, got {base}")
    if not 1 <= depth <= 7:
        raise ModelConfigError(f"depth must be between 1 and 7, got {depth}")


class SegmentationModel(nn.Module):
    """Base class: a 2-D model whose input sides must be a multiple of ``2**depth``.

    Subclasses set ``self.depth`` and call :meth:`check_eager_input` first in ``forward``; the
    check is skipped while tracing, scripting or compiling so the exported graph has no
    data-dependent branch.
    """

    depth: int

    @property
    def size_multiple(self) -> int:
        """Input sides must be a multiple of this."""
        return 2**self.depth

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ModelConfigError naming the padded size when (height, width) cannot be used."""
        m = self.size_multiple
        if height % m or width % m or height < m or width < m:
            padded = (max(m, -(-height // m) * m), max(m, -(-width // m) * m))
            raise ModelConfigError(
                f"input size {height}x{width} is not divisible by {m} (2**depth, depth={self.depth}); "
                f"pad it to {padded[0]}x{padded[1]}"
            )

    def check_eager_input(self, x: Tensor) -> None:
        """check_input_size on ``x`` when running eagerly."""
        if not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            self.check_input_size(int(x.shape[-2]), int(x.shape[-1]))
