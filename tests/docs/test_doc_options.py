"""Every option the README and the guide write after an `edgeseg COMMAND` is an option of that
command. The long commands of docs/results.md take hours to run, so a renamed or removed option
would otherwise be found only by a reader hours into reproducing a figure."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a command and what follows it up to the end of its code span, table cell or line
COMMAND = re.compile(r"\bedgeseg ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?([^`|\n]*)")
OPTION = re.compile(r"(?<![\w$-])(--[a-z][a-z0-9-]*)")


def command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every line, shell continuations (a trailing backslash) joined."""
    joined, start, parts = [], None, []
    for number, line in enumerate(text.splitlines(), 1):
        start = number if start is None else start
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        joined.append((start, " ".join([*parts, line])))
        start, parts = None, []
    return joined


def options_of(command: click.Command) -> set[str]:
    return {name for param in command.params for name in (*param.opts, *param.secondary_opts)} | {"--help"}


def mentions(path: Path) -> list[tuple[int, str, str]]:
    """(line, command as typed, option) for every option written after a known edgeseg command."""
    from edgeseg.cli.main import cli

    found = []
    for number, line in command_lines(path.read_text()):
        for match in COMMAND.finditer(line):
            name, sub, rest = match.groups()
            command = cli.commands.get(name)
            if isinstance(command, click.Group):
                command, name = command.commands.get(sub or ""), f"{name} {sub}"
            if command is None:
                continue  # prose ("edgeseg never downloads ..."), not a command
            known = options_of(command)
            found += [(number, name, option) for option in OPTION.findall(rest) if option not in known]
    return found


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_every_documented_option_exists(path):
    unknown = mentions(path)
    assert not unknown, "\n".join(f"{path.name}:{n}: edgeseg {c} has no {o}" for n, c, o in unknown)


def test_the_check_sees_options_on_continued_lines(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```\nedgeseg train --data D \\\n    --epochs 2 --no-such-option\n```\n"
                    "`edgeseg data synth --cases 3 --colour red` and `edgeseg inspect B`\n")
    assert mentions(page) == [(2, "train", "--no-such-option"), (5, "data synth", "--colour")]
