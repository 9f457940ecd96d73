"""``python -m edgeseg`` runs the edgeseg command (torchrun starts ``-m edgeseg train`` this way)."""

from edgeseg.cli.main import cli

cli(prog_name="edgeseg")
