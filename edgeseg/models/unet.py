"""The U-Net of Ronneberger et al. (2015) with batch norm, and its residual-block variant."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgeseg.errors import ModelConfigError
from edgeseg.models.base import SegmentationModel, check_widths
from edgeseg.models.blocks import BLOCKS


class UNet(SegmentationModel):
    """Encoder-decoder with skip connections for 2-D slices.

    The encoder halves the resolution ``depth`` times with max pooling and doubles the width;
    the decoder upsamples with a 2x2 transposed convolution, concatenates the skip and applies
    the same block. ``forward`` has no data-dependent control flow, so it traces and exports to
    ONNX with a dynamic batch axis.

    Args:
        in_channels: input channels (1 for a CT slice).
        num_classes: output channels (logits), background included.
        base: width of the first level; level ``i`` has ``base * 2**i`` channels.
        depth: number of down-sampling steps; input sides must be divisible by ``2**depth``.
        block: "plain" (two conv-BN-ReLU) or "residual".

    Returns:
        ``forward(x)`` maps (N, in_channels, H, W) to (N, num_classes, H, W) logits.

    Example:
        >>> model = UNet(in_channels=1, num_classes=2, base=8, depth=2)
        >>> model(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 2, 64, 64])
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 2, base: int = 32, depth: int = 4, block: str = "plain"
    ) -> None:
        super().__init__()
        _check_config(in_channels, num_classes, base, depth, block)
        make = BLOCKS[block]
        widths = [base * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.stem = make(in_channels, widths[0])
        self.down = nn.ModuleList(make(widths[i], widths[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth)))
        self.decode = nn.ModuleList(make(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        self.check_eager_input(x)
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(self.pool(skips[-1])))
        y = skips.pop()
        for up, block in zip(self.up, self.decode):
            y = block(torch.cat([up(y), skips.pop()], dim=1))
        return self.head(y)


def _check_config(in_channels: int, num_classes: int, base: int, depth: int, block: str) -> None:
    check_widths(in_channels, num_classes, base, depth)
    if block not in BLOCKS:
        raise ModelConfigError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
