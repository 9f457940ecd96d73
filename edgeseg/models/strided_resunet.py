"""A U-Net that down-samples with strided residual units instead of max pooling.

The layout is that of MONAI's ``UNet(channels=(b, 2b, 4b, 8b, 16b), strides=(2, 2, 2, 2),
num_res_units=2)``, built from our own blocks with batch norm and ReLU: the first unit already
works at half resolution, so no 3x3 convolution runs at full resolution with more than the
class count as output, which makes it several times cheaper than the max-pool U-Net.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgeseg.models.base import SegmentationModel, check_widths
from edgeseg.models.blocks import ResidualUnit


class UpUnit(nn.Sequential):
    """3x3 stride-2 transposed conv-BN-ReLU, then a one-layer residual unit.

    The top unit emits logits: its transposed conv keeps a bias and has no BN-ReLU (a ReLU over
    as few channels as there are classes would zero most of the gradient), and its residual
    unit ends in a bare convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, top: bool) -> None:
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=top)
        ]
        if not top:
            layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        layers.append(ResidualUnit(out_channels, out_channels, subunits=1, last_conv_only=top))
        super().__init__(*layers)


class StridedResUNet(SegmentationModel):
    """Encoder of ``depth`` stride-2 residual units (two layers each) and a stride-1 bottom unit;
    the decoder concatenates each skip before a stride-2 transposed-convolution up unit.

    Args:
        in_channels: input channels (1 for a CT slice).
        num_classes: output channels (logits), background included.
        base: width of the first unit; unit ``i`` has ``base * 2**i`` channels.
        depth: number of stride-2 steps; input sides must be divisible by ``2**depth``.

    Returns:
        ``forward(x)`` maps (N, in_channels, H, W) to (N, num_classes, H, W) logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base: int = 32, depth: int = 4) -> None:
        super().__init__()
        check_widths(in_channels, num_classes, base, depth)
        widths = [base * 2**i for i in range(depth + 1)]
        self.depth = depth
        inputs = [in_channels, *widths[:depth - 1]]
        self.encoder = nn.ModuleList(ResidualUnit(inputs[i], widths[i], stride=2) for i in range(depth))
        self.bottom = ResidualUnit(widths[depth - 1], widths[depth])
        ups = []
        for i in reversed(range(depth)):
            concat = widths[i] + (widths[depth] if i == depth - 1 else widths[i])
            ups.append(UpUnit(concat, widths[i - 1] if i > 0 else num_classes, top=i == 0))
        self.decoder = nn.ModuleList(ups)

    def forward(self, x: Tensor) -> Tensor:
        self.check_eager_input(x)
        skips = []
        for unit in self.encoder:
            x = unit(x)
            skips.append(x)
        y = self.bottom(x)
        for up in self.decoder:
            y = up(torch.cat([skips.pop(), y], dim=1))
        return y
