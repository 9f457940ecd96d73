"""An efficient U-Net for CPUs and edge GPUs: inverted-residual encoder, light bilinear decoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgeseg.models.base import SegmentationModel, check_widths
from edgeseg.models.blocks import ConvBNReLU, InvertedResidual, SeparableConv


class MobileUNet(SegmentationModel):
    """U-Net with a strided stem, MobileNetV2 encoder stages and a half-width decoder.

    A stride-2 3x3 stem is followed by ``depth - 1`` stages of two inverted-residual blocks (the
    first with stride 2), so no wide layer runs at full resolution. Each decoder step upsamples
    bilinearly (no transposed convolution: no checkerboard artefacts, no upsampling weights),
    concatenates the skip and applies a depthwise-separable conv to half the skip's width; the
    last step concatenates the input slice itself, which restores full-resolution edges.

    Args:
        in_channels: input channels (1 for a CT slice).
        num_classes: output channels (logits), background included.
        base: width of the stem; stage ``i`` has ``base * 2**i`` channels.
        depth: number of stride-2 steps; input sides must be divisible by ``2**depth``.
        expand: expansion ratio of the inverted-residual blocks.

    Returns:
        ``forward(x)`` maps (N, in_channels, H, W) to (N, num_classes, H, W) logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base: int = 32, depth: int = 4,
                 expand: int = 4) -> None:
        super().__init__()
        check_widths(in_channels, num_classes, base, depth)
        widths = [base * 2**i for i in range(depth)]
        decoded = [max(2, w // 2) for w in widths]
        self.depth = depth
        self.stem = ConvBNReLU(in_channels, widths[0], stride=2)
        self.encoder = nn.ModuleList(
            nn.Sequential(InvertedResidual(widths[i - 1], widths[i], 2, expand),
                          InvertedResidual(widths[i], widths[i], 1, expand))
            for i in range(1, depth)
        )
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        incoming = [widths[-1] if i == depth - 2 else decoded[i + 1] for i in range(depth - 1)]
        self.decoder = nn.ModuleList(SeparableConv(incoming[i] + widths[i], decoded[i]) for i in reversed(range(depth - 1)))
        top_in = (decoded[0] if depth > 1 else widths[0]) + in_channels
        self.top = SeparableConv(top_in, decoded[0])
        self.head = nn.Conv2d(decoded[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        self.check_eager_input(x)
        skips = [self.stem(x)]
        for stage in self.encoder:
            skips.append(stage(skips[-1]))
        y = skips.pop()
        for block in self.decoder:
            y = block(torch.cat([self.upsample(y), skips.pop()], dim=1))
        y = self.top(torch.cat([self.upsample(y), x], dim=1))
        return self.head(y)
