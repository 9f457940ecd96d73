"""``python -m edgeseg.cli`` runs the edgeseg command."""

from edgeseg.cli.main import cli

cli()
