"""``edgeseg gate``: score a bundle on the runners installed here that its export gate never ran."""

from __future__ import annotations

import click

from edgeseg.cli.input_limits import input_limit_options
from edgeseg.cli.quiet_option import quiet_option


@click.command("gate")
@input_limit_options
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="The checkpoint the bundle was exported from (its sha256 must be the manifest's): with torch "
                   "installed, the gate's reference. Without it (or torch), the reference is the bundle's FP32 ONNX "
                   "graph on ONNX Runtime CPU.")
@click.option("--verify-data", default=None,
              help="Held-out data for the gate, slices drawn afresh from it (default: the export's own held-out slices, "
                   "as parity.json records them; without the checkpoint or torch, needed where the export's data is not here).")
@click.option("--intensity", default=None, help="What slice-folder pixels mean for --verify-data: 'hu-clipped:0,255' or 'window:LO,HI'.")
@click.option("--backend", "backends", multiple=True,
              help="Score only this runner (NAME or NAME:PRECISION; repeatable). Default: every installed runner without a verdict.")
@quiet_option
def command(bundle, checkpoint, verify_data, intensity, backends, quiet) -> None:
    """Score BUNDLE's artifacts on every installed runner its export gate did not run (one that
    was not installed where it was exported), with the export's gate settings, and record the
    verdicts in parity.json and manifest.json: a passed runner becomes one `auto` may pick. The
    reference is the checkpoint's PyTorch model, or without torch or --checkpoint the bundle's FP32
    ONNX graph on ONNX Runtime CPU. The manifest's sha256, the bundle's identity, changes when
    anything is recorded."""
    from edgeseg.export.regate import rescore_bundle

    rescore_bundle(bundle, checkpoint, verify_data=verify_data, intensity=intensity, backends=backends,
                   progress=not quiet, echo=click.echo)
