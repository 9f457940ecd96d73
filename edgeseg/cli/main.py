"""The ``edgeseg`` command: a click group; each command lives in its own module."""

from __future__ import annotations

import sys

import click

from edgeseg import __version__
from edgeseg.errors import EdgesegError


class EdgesegGroup(click.Group):
    """Turns an EdgesegError into one line on stderr and exit status 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgesegError as exc:
            click.echo(f"edgeseg: error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("edgeseg: interrupted", err=True)
            sys.exit(130)


@click.group(cls=EdgesegGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeseg")
def cli() -> None:
    """edgeseg: U-Net CT segmentation from training to a scanner-side device."""


def _register() -> None:
    from edgeseg.cli import (bench, compare, data, evaluate, export, inspect, listen, models, predict, serve,
                             sweep, train, triton)

    for module in (data, models, train, evaluate, compare, export, inspect, predict, bench, serve, triton, listen, sweep):
        cli.add_command(module.command)
    cli.add_command(bench.serve_command)


_register()
