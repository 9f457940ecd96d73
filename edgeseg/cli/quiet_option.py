"""``--quiet``: one option, one meaning, for every command that takes it (edgeseg.cli.logs)."""

from __future__ import annotations

import click

QUIET_HELP = ("No progress and no info lines; warnings are still printed, after the command succeeds, and a "
              "failed command prints its error line alone.")


def _quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    # set while the arguments are parsed: the command's first log record already sees it
    if value:
        from edgeseg.cli.logs import quiet_logging

        quiet_logging()
    return value


def quiet_option(command):
    """Add ``--quiet`` to a click command; the command reads it only to show no progress."""
    return click.option("--quiet", is_flag=True, callback=_quiet, help=QUIET_HELP)(command)
