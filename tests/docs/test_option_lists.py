"""The guide's lists of the commands that take an option (`--quiet`, the input limits, `--tta`)
name exactly the commands whose `--help` has it. A list written once and not kept up drifts
silently: a command that gains the option is missing from it, one that loses it stays."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli.test_cli_consistency import commands

DOCS = Path(__file__).resolve().parents[2] / "docs"

# (page, option, pattern whose group 1 holds the page's list of commands, commands named
# elsewhere in the same sentence)
LISTS = [
    ("index.md", "--quiet", r"\*\*`--quiet`\*\* \(([^)]*)\)", ()),
    ("input-limits.md", "--max-pixels", r"The options exist on the commands that read images \(([^)]*)\)",
     ("bench",)),
    ("runtime.md", "--tta", r"--tta mirror +# also: (.*?) --tta", ("predict",)),
]


def listed(text: str) -> set[str]:
    """Command names of a list: `a`, `b` / a, b / edgeseg a / b."""
    names = re.split(r"[,/]", text.replace("`", "").replace("edgeseg ", ""))
    return {name.strip() for name in names if name.strip()}


def taking(option: str) -> set[str]:
    return {name for name, command in commands().items()
            if name and any(option in param.opts for param in command.params)}


@pytest.mark.parametrize("page,option,pattern,also", LISTS, ids=[f"{page}:{option}" for page, option, _, _ in LISTS])
def test_a_list_of_commands_names_those_that_take_the_option(page, option, pattern, also):
    match = re.search(pattern, (DOCS / page).read_text(), re.S)
    assert match, f"{page}: the list of commands taking {option} is gone; update LISTS"
    named = listed(match.group(1)) | set(also)
    real = taking(option)
    assert named == real, (f"{page}: the commands listed for {option} are not those that take it: "
                           f"missing {sorted(real - named)}, not taking it {sorted(named - real)}")


def test_listed_reads_the_three_spellings():
    assert listed("train, cv, `data synth`, `data info`") == {"train", "cv", "data synth", "data info"}
    assert listed("`predict`, `train`") == {"predict", "train"}
    assert listed("edgeseg evaluate / cv / serve") == {"evaluate", "cv", "serve"}
