"""README.md's table of commands names every command `edgeseg --help` lists, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import click

ROOT = Path(__file__).parents[2]


def cli_commands() -> set[str]:
    """Every leaf command of the edgeseg group, as typed ('data synth', 'train', ...)."""
    from edgeseg.cli.main import cli

    found = set()

    def walk(group: click.Group, prefix: str) -> None:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")
            else:
                found.add(f"{prefix}{name}")

    walk(cli, "")
    return found


def table_commands() -> set[str]:
    """The commands of the README's '## Commands' table (first cell of each row)."""
    section = re.search(r"^## Commands\n(.*?)(?=^## )", (ROOT / "README.md").read_text(), re.S | re.M)
    assert section, "README.md has no '## Commands' section"
    cells = re.findall(r"^\| `edgeseg ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", section.group(1), re.M)
    return set(cells)


def test_readme_table_lists_every_command():
    commands, table = cli_commands(), table_commands()
    assert table == commands, f"missing from the README: {sorted(commands - table)}; not commands: {sorted(table - commands)}"
