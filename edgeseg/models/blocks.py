"""Convolution blocks shared by the segmentation architectures.

Every block is plain convolution, batch norm and ReLU, so each architecture traces, exports to
ONNX and quantises to INT8 (Q/DQ) without custom operators.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (no bias: batch norm follows), batch norm, ReLU.

    ``stride`` 2 halves the resolution; ``groups`` equal to the channels makes it depthwise.

    A strided depthwise block runs in float32 when CPU bfloat16 autocast is on (training on a CPU
    with AMX): oneDNN's bfloat16 backward of a stride-2 depthwise convolution is several times
    slower than its float32 one (8x64x128x128, channels-last, two threads: 50.6 ms against
    15.0 ms for forward and backward; benchmarks/bench_depthwise_bf16.py), while every other convolution gains from bfloat16. Inference, tracing
    and export never run under autocast, so the exported graph is the same.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.float32_under_cpu_autocast = stride > 1 and groups > 1 and groups == in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.float32_under_cpu_autocast and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class PointwiseBN(nn.Sequential):
    """1x1 convolution and batch norm, with a ReLU unless ``act`` is False (a linear bottleneck)."""

    def __init__(self, in_channels: int, out_channels: int, act: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """The Ronneberger block: two 3x3 conv-BN-ReLU layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels))


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut.

    The ReLU comes after the addition, and the projection has its own batch norm, so both
    branches are on the same scale when they are summed (He et al., 2016). The second batch
    norm starts at zero weight so each block begins as (close to) its shortcut, which keeps
    deep stacks trainable from the first step.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        nn.init.zeros_(self.bn2.weight)
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = PointwiseBN(in_channels, out_channels, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResidualUnit(nn.Module):
    """A MONAI-style residual unit: ``subunits`` 3x3 conv-BN-ReLU layers plus a shortcut.

    The first layer carries the ``stride``, so a stride-2 unit down-samples by learning (the
    strided-convolution U-Net has no pooling). The shortcut is the identity when shape is kept,
    else a convolution with the same stride (3x3 when strided, as MONAI does, 1x1 otherwise).
    With ``last_conv_only`` the final layer is a bare convolution, for a unit that emits logits.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, subunits: int = 2,
                 last_conv_only: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(subunits):
            step = stride if i == 0 else 1
            if last_conv_only and i == subunits - 1:
                layers.append(nn.Conv2d(channels, out_channels, 3, stride=step, padding=1))
            else:
                layers.append(ConvBNReLU(channels, out_channels, stride=step))
            channels = out_channels
        self.body = nn.Sequential(*layers)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            kernel = 3 if stride != 1 else 1
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


class InvertedResidual(nn.Module):
    """The MobileNetV2 block: 1x1 expansion, 3x3 depthwise (carrying the stride), 1x1 projection.

    Most multiply-adds sit in the 1x1 convolutions, which int8 CPU kernels and edge GPUs run
    near their peak; the depthwise 3x3 is cheap. The identity shortcut is used when the block
    keeps the shape (stride 1, same width).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand: int = 4) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.body = nn.Sequential(
            PointwiseBN(in_channels, hidden),
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            PointwiseBN(hidden, out_channels, act=False),
        )
        self.use_shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.use_shortcut else y


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 conv-BN-ReLU then pointwise 1x1 conv-BN-ReLU: a 3x3 conv at ~1/9 the cost."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBNReLU(in_channels, in_channels, groups=in_channels), PointwiseBN(in_channels, out_channels))


BLOCKS: dict[str, type[nn.Module]] = {"plain": DoubleConv, "residual": ResidualBlock}
