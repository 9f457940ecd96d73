"""``--tta``: test-time mirroring for the commands that predict (edgeseg.runtime.tta)."""

from __future__ import annotations

import click

# The modes of edgeseg.runtime.tta.TTA_MODES, named here so that a command's start imports no
# numpy (a test keeps the two equal).
TTA_CHOICES = ("none", "flip", "mirror")


TTA_HELP = ("Test-time mirroring: average the class probabilities of the slice and its left-right mirror "
            "(flip, 2 network passes) or of all four mirrors (mirror, 4 passes).")


def tta_option(command):
    """Add ``--tta none|flip|mirror`` (default none) to a click command."""
    return click.option("--tta", type=click.Choice(TTA_CHOICES, case_sensitive=False), default="none", show_default=True,
                        help=TTA_HELP)(command)


def tta_parameter() -> click.Option:
    """The same option as an object, for commands built from a parameter list."""
    return click.Option(["--tta"], type=click.Choice(TTA_CHOICES, case_sensitive=False), default="none", show_default=True, help=TTA_HELP)
