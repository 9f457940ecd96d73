"""Training step of an architecture with strided depthwise blocks (mobile_unet) under CPU bf16
autocast: those blocks in float32 (edgeseg's choice, see ``models.blocks.ConvBNReLU``) against
everything in bf16, in alternating rounds on one model, so that load on the machine hits both
alike; the ratio of the median step times is the figure. Also times one strided depthwise
convolution's forward and backward alone in both precisions.

    python benchmarks/bench_depthwise_bf16.py --base 16 --threads 2
    python benchmarks/bench_depthwise_bf16.py --base 32 --threads 2 --rounds 5

Meaningful only on a CPU with AMX (where the training loop turns bf16 autocast on).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from edgeseg.models import ModelConfig, build_model
from edgeseg.models.blocks import ConvBNReLU
from edgeseg.train.losses import DiceCELoss


def strided_depthwise_blocks(model: torch.nn.Module) -> list[ConvBNReLU]:
    """The blocks the model itself runs in float32 under CPU autocast (read before any switch)."""
    return [m for m in model.modules() if isinstance(m, ConvBNReLU) and m.float32_under_cpu_autocast]


def set_float32(blocks: list[ConvBNReLU], on: bool) -> None:
    """Switch those blocks between float32 and bf16 under autocast."""
    for block in blocks:
        block.float32_under_cpu_autocast = on


def step_seconds(model, optimizer, loss_fn, x, y, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps


def single_conv(channels: int, side: int, batch: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Median ms of forward + backward of one stride-2 depthwise 3x3 convolution, channels-last."""
    conv = torch.nn.Conv2d(channels, channels, 3, 2, 1, groups=channels, bias=False).to(dtype)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(batch, channels, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = torch.randn_like(conv(x))
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        conv(x).backward(grad)
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobile_unet")
    parser.add_argument("--base", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=args.model, num_classes=2, base=args.base, depth=4)).train()
    model = model.to(memory_format=torch.channels_last)
    blocks = strided_depthwise_blocks(model)
    count = len(blocks)
    if not count:
        print(f"{args.model} has no strided depthwise blocks: nothing to compare", file=sys.stderr)
        return 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss()
    x = torch.randn(args.batch, 1, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(args.batch, args.size, args.size) > 0.7).long()
    times: dict[str, list[float]] = {"float32": [], "bf16": []}
    for mode in times:  # warm-up, untimed
        set_float32(blocks, mode == "float32")
        step_seconds(model, optimizer, loss_fn, x, y, 1)
    for _ in range(args.rounds):
        for mode in times:
            set_float32(blocks, mode == "float32")
            times[mode].append(step_seconds(model, optimizer, loss_fn, x, y, args.steps))
        print("round: " + ", ".join(f"{k} {v[-1]:.3f} s/step" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model} base {args.base}, {count} strided depthwise blocks, batch {args.batch} at {args.size}², "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds of {args.steps} steps")
    for k, v in med.items():
        print(f"strided depthwise in {k:7s}: median {v:.3f} s/step")
    print(f"ratio all-bf16 / float32-depthwise: {med['bf16'] / med['float32']:.2f}")
    half = args.size // 2
    width = args.base * 4
    fp32, bf16 = single_conv(width, half, args.batch, torch.float32), single_conv(width, half, args.batch, torch.bfloat16)
    print(f"one stride-2 depthwise conv {args.batch}x{width}x{half}x{half}, forward+backward: "
          f"float32 {fp32:.1f} ms, bf16 {bf16:.1f} ms ({bf16 / fp32:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
