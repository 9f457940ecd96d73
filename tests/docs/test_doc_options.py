"""Every option the README and the guide write after an `edgeseg COMMAND` is an option of that
command. The long commands of docs/results.md take hours to run, so a renamed or removed option
would otherwise be found only by a reader hours into reproducing a figure. A list of options
written without its command (`--size 64 --base 8 ...`) holds options of some edgeseg command."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a command and what follows it up to the end of its code span, table cell or line; in a code
# block `|` separates alternatives (`[--format nifti|png]`), not table cells
COMMAND = re.compile(r"\bedgeseg ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?([^`|\n]*)")
FENCED_COMMAND = re.compile(r"\bedgeseg ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?([^`\n]*)")
OPTION = re.compile(r"(?<![\w$-])(--[a-z][a-z0-9-]*)")
# `[--option VALUE]` of a synopsis, VALUE a literal (not a placeholder such as N or a choice a|b)
SHOWN_DEFAULT = re.compile(r"\[(--[a-z][a-z0-9-]*) ([^\]\s|A-Z]+)\]")


def command_lines(text: str) -> list[tuple[int, str, bool]]:
    """(line number, text, inside a code block) of every line, shell continuations (a trailing
    backslash) joined, and so is a synopsis's indented continuation (`    [--threads N] ...`)."""
    joined, start, parts, fenced = [], None, [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            joined.append((number, line, False))
            continue
        if fenced and re.match(r"\s+\[--", line) and joined and joined[-1][2]:
            first, previous, _ = joined.pop()
            joined.append((first, f"{previous} {line.strip()}", True))
            continue
        start = number if start is None else start
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        joined.append((start, " ".join([*parts, line]), fenced))
        start, parts = None, []
    return joined


def commands(path: Path):
    """(line, command as typed, click command, text after it) for every known edgeseg command."""
    from edgeseg.cli.main import cli

    for number, line, fenced in command_lines(path.read_text()):
        for match in (FENCED_COMMAND if fenced else COMMAND).finditer(line):
            name, sub, rest = match.groups()
            command = cli.commands.get(name)
            if isinstance(command, click.Group):
                command, name = command.commands.get(sub or ""), f"{name} {sub}"
            if command is None:
                continue  # prose ("edgeseg never downloads ..."), not a command
            yield number, name, command, rest.split(" # ")[0]


def options_of(command: click.Command) -> set[str]:
    return {name for param in command.params for name in (*param.opts, *param.secondary_opts)} | {"--help"}


def mentions(path: Path) -> list[tuple[int, str, str]]:
    """(line, command as typed, option) for every option written after a known edgeseg command."""
    found = []
    for number, name, command, rest in commands(path):
        known = options_of(command)
        found += [(number, name, option) for option in OPTION.findall(rest) if option not in known]
    return found


def shown_defaults(path: Path) -> list[tuple[int, str, str, str, object]]:
    """(line, command, option, value shown, real default) for every `[--option VALUE]` of a synopsis
    whose VALUE is not the option's default."""
    wrong = []
    for number, name, command, rest in commands(path):
        for option, shown in SHOWN_DEFAULT.findall(rest):
            param = next((p for p in command.params if option in p.opts), None)
            if param is None:
                continue  # test_every_documented_option_exists names it
            context = click.Context(command)
            default = param.get_default(context, call=True)
            if default is None:
                continue  # resolved at run time (its help says to what)
            try:
                value = param.type_cast_value(context, shown)
            except click.BadParameter:
                value = shown
            if value != default:
                wrong.append((number, name, option, shown, default))
    return wrong


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_every_documented_option_exists(path):
    unknown = mentions(path)
    assert not unknown, "\n".join(f"{path.name}:{n}: edgeseg {c} has no {o}" for n, c, o in unknown)


def test_the_check_sees_options_on_continued_lines(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```\nedgeseg train --data D \\\n    --epochs 2 --no-such-option\n```\n"
                    "`edgeseg data synth --cases 3 --colour red` and `edgeseg inspect B`\n")
    assert mentions(page) == [(2, "train", "--no-such-option"), (5, "data synth", "--colour")]


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_a_synopsis_shows_the_real_defaults(path):
    wrong = shown_defaults(path)
    assert not wrong, "\n".join(f"{path.name}:{n}: edgeseg {c} shows [{o} {v}], its default is {d!r}"
                                 for n, c, o, v, d in wrong)


def test_the_checks_read_a_synopsis_whole(tmp_path):
    """Past a choice's `|` and on the synopsis's indented second line, which are not table cells."""
    page = tmp_path / "page.md"
    page.write_text("```\nedgeseg predict B I --out O [--format nifti|npy] [--backend auto] [--colour red]\n"
                    "                  [--threads 0] [--timeout 60] [--no-such-option]\n"
                    "edgeseg serve BUNDLE [--port 8080] [--max-batch 8] [--host 127.0.0.1]\n```\n"
                    "| `edgeseg serve --port 1 | --colour` |\n")
    assert mentions(page) == [(2, "predict", "--colour"), (2, "predict", "--no-such-option")]
    assert shown_defaults(page) == [(4, "serve", "--port", "8080", 8000)]


# a code span of options alone (`--size 64 --base 8 --epochs 20`), written where the command is
# named in the prose around it; one option alone may be another tool's (`--fork`), two or more are
# read as edgeseg's
BARE_OPTIONS = re.compile(r"`(--[a-z][^`\n]*)`")


def unknown_in_bare_option_lists(path: Path) -> list[tuple[int, str]]:
    """(line, option) for every option of a bare option list that no edgeseg command has."""
    from tests.cli.test_cli_consistency import commands as every_command

    known = set().union(*(options_of(command) for name, command in every_command().items() if name))
    text, found = path.read_text(), []
    for match in BARE_OPTIONS.finditer(text):
        options = OPTION.findall(match.group(1))
        if len(options) >= 2:
            line = text.count("\n", 0, match.start()) + 1
            found += [(line, option) for option in options if option not in known]
    return found


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_every_option_of_a_bare_option_list_exists(path):
    unknown = unknown_in_bare_option_lists(path)
    assert not unknown, "\n".join(f"{path.name}:{n}: no edgeseg command has {o}" for n, o in unknown)


def test_the_check_reads_bare_option_lists(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("trained with `--size 64 --augment --seed 1`; storescp takes `--fork`\n")
    assert unknown_in_bare_option_lists(page) == [(1, "--augment")]
