"""``edgeseg models``: the registered architectures with their size and cost."""

from __future__ import annotations

import click

from edgeseg.errors import require


@click.command("models")
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=1),
              help="Input side in pixels the GFLOP are counted at.")
@click.option("--base", default=32, show_default=True, type=click.IntRange(min=1), help="Width of the first level.")
@click.option("--depth", default=4, show_default=True, type=click.IntRange(min=1), help="Number of down-sampling steps.")
@click.option("--classes", default=2, show_default=True, type=click.IntRange(min=2),
              help="Output classes, background included.")
def command(size, base, depth, classes) -> None:
    """List the architectures `edgeseg train --model` accepts: parameters and GFLOP per slice
    (2 x multiply-adds of convolutions, counted by torch.utils.flop_counter)."""
    require("torch", "train", "edgeseg models")
    from edgeseg.models.complexity import describe
    from edgeseg.models.registry import MODELS, ModelConfig

    rows = []
    for name, entry in MODELS.items():
        info = describe(ModelConfig(name=name, num_classes=classes, base=base, depth=depth), size)
        rows.append((name, f"{info['params'] / 1e6:.2f}", f"{info['gflop']:.2f}", entry.summary))
    header = ("model", "params (M)", f"GFLOP @{size}x{size}", "design")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    click.echo(f"base {base}, depth {depth}, {classes} classes")
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row[:3], widths)))
                   + "  " + row[3])
