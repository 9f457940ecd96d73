"""Rules every edgeseg command keeps, checked over the whole command tree: one spelling per idea,
help for every option, case-insensitive choices, --quiet and the input limits where a command
has a progress bar or reads images; the renamed options' old names still work; --version, the
environment variables and shell completion are what docs/index.md says."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from edgeseg.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
EDGESEG = [sys.executable, "-m", "edgeseg.cli"]

# spelling a command may not list -> the one used for that idea everywhere
RENAMED = {"--force": "--overwrite", "--seconds": "--duration", "--name": "--model-name"}
# commands without a progress bar: servers (they log), and those that only print or write a few files
NO_PROGRESS = {"serve", "listen", "inspect", "models", "sdk", "version", "compare", "triton", "bench-serve"}
# commands that read no image: --max-pixels / --max-volume-bytes would bound nothing
NO_IMAGES = {"models", "sdk", "version", "compare", "inspect", "triton", "bench-serve", "data synth"}


def commands() -> dict[str, click.Command]:
    """Every leaf command as typed ('data synth', 'train', ...), and the root group as ''."""
    found = {"": cli}

    def walk(group: click.Group, prefix: str) -> None:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")
            else:
                found[f"{prefix}{name}"] = command

    walk(cli, "")
    return found


def shown_names(command: click.Command) -> dict[str, click.Option]:
    """Option name -> option, for the names ``--help`` lists."""
    ctx = click.Context(command)
    shown = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record is None:
            continue
        for name in re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", record[0]):
            shown[name] = param
    return shown


def run(*args, env=None):
    return subprocess.run([*EDGESEG, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("name", sorted(commands()), ids=lambda n: n or "edgeseg")
def test_every_listed_option_has_help(name):
    command = commands()[name]
    bare = [p.opts[0] for p in command.params
            if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert not bare, f"edgeseg {name}: options without help: {bare}"


@pytest.mark.parametrize("name", sorted(commands()), ids=lambda n: n or "edgeseg")
def test_choices_are_case_insensitive(name):
    """As --backend is (OpenVINO:INT8 = openvino:int8), so is every choice (--kind kind_cpu)."""
    sensitive = [p.opts[0] for p in commands()[name].params
                 if isinstance(p.type, click.Choice) and p.type.case_sensitive]
    assert not sensitive, f"edgeseg {name}: case-sensitive choices {sensitive}"


def test_a_choice_in_capitals_is_taken_as_written_in_lower_case(tmp_path):
    proc = run("data", "synth", "--out", tmp_path / "p", "--cases", 1, "--size", 16, "--slices", 2, "--kind", "CHEST",
               "--format", "NIFTI", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "chest phantom" in proc.stdout and (tmp_path / "p" / "imagesTr").is_dir()


@pytest.mark.parametrize("name", sorted(commands()), ids=lambda n: n or "edgeseg")
def test_one_spelling_per_idea(name):
    command = commands()[name]
    shown = shown_names(command)
    old = {spelling: current for spelling, current in RENAMED.items() if spelling in shown}
    assert not old, f"edgeseg {name} lists {old} (old spelling -> the one every command uses)"
    if "--model" in shown:  # the architecture (train, cv); a served model's name is --model-name
        assert "--arch" in shown_names(command), f"edgeseg {name}: --model is not the architecture here"


@pytest.mark.parametrize("name", sorted(set(commands()) - NO_PROGRESS - {"", "data"}))
def test_commands_with_a_progress_bar_have_quiet(name):
    assert "--quiet" in shown_names(commands()[name]), f"edgeseg {name} has no --quiet"


def quiet_commands() -> list[str]:
    return sorted(name for name, command in commands().items() if "--quiet" in shown_names(command))


def test_every_quiet_says_the_same():
    """One meaning, so one help text: it said "No progress bar." on most commands and "No
    progress bar and no log lines." on predict, which also behaved otherwise."""
    helps = {name: shown_names(commands()[name])["--quiet"].help for name in quiet_commands()}
    assert len(set(helps.values())) == 1, helps
    assert "warnings are still printed" in helps["predict"], helps["predict"]


@pytest.mark.parametrize("name", quiet_commands())
def test_every_quiet_drops_info_lines_and_holds_warnings(name, capfd):
    """--quiet parsed as the command group runs the command: what the command then logs at info
    is not printed, and a warning is held (one line, prefixed) for after its success. cv, train,
    sweep, export and evaluate printed their info lines; predict dropped its warnings too."""
    from edgeseg.cli.logs import configure_logging, reset_logging

    command = commands()[name]
    configure_logging()  # as EdgesegGroup.invoke does before each command
    try:
        command.make_context(name, ["--quiet"], resilient_parsing=True)  # its other arguments do not matter
        log = logging.getLogger(f"edgeseg.{name.replace(' ', '.')}")
        log.info("an info line")
        log.warning("a warning\nover two lines")
        assert capfd.readouterr().err == ""
        from edgeseg.cli.logs import held_warnings

        assert held_warnings() == ["edgeseg: warning: a warning over two lines"]
    finally:
        reset_logging()


@pytest.mark.parametrize("name", sorted(set(commands()) - NO_IMAGES - {""}))
def test_commands_that_read_images_take_the_input_limits(name):
    shown = shown_names(commands()[name])
    assert {"--max-pixels", "--max-volume-bytes"} <= set(shown), f"edgeseg {name} has no input limit options"


@pytest.mark.parametrize(("args", "renamed"), [
    (["export", "c.pt", "--out", "b", "--force"], {"overwrite": True}),
    (["triton", "b", "r", "--force", "--name", "liver"], {"overwrite": True, "name": "liver"}),
    (["bench-serve", "b", "--seconds", "2.5", "--model", "x-pipeline"], {"seconds": 2.5, "model": "x-pipeline"}),
])
def test_old_spellings_still_work(args, renamed):
    """Scripts written before the renames run unchanged, to the same values as the new names."""
    command = cli.commands[args[0]]
    old = command.make_context(args[0], args[1:]).params
    new_args = [{"--force": "--overwrite", "--name": "--model-name", "--seconds": "--duration",
                 "--model": "--model-name"}.get(a, a) for a in args[1:]]
    new = command.make_context(args[0], new_args).params
    assert {k: old[k] for k in renamed} == renamed == {k: new[k] for k in renamed}


def test_an_error_names_the_option_as_listed(assert_one_line_error):
    proc = run("bench-serve", "missing", "--seconds", "-1")
    assert_one_line_error(proc, "Invalid value for '--duration'")


def test_cv_has_its_own_out_and_folds():
    """cv's folds went into train's default run folder, and its help showed 0 folds as the default."""
    cv, train = commands()["cv"], commands()["train"]
    options = {p.name: p for p in cv.params}
    assert options["out"].default != {p.name: p for p in train.params}["out"].default
    assert options["folds"].required and options["folds"].type.min == 2
    assert {"--val-fraction", "--test-fraction"}.isdisjoint(shown_names(cv))  # refused by cv: not listed


def test_cv_without_folds_is_one_line(assert_one_line_error, tmp_path):
    proc = run("cv", "--data", "phantom:cases=4,size=64,slices=8", "--out", tmp_path / "cv")
    assert_one_line_error(proc, "Missing option '--folds'")
    assert not (tmp_path / "cv").exists()


def test_version_names_the_kernels_and_the_libraries():
    from edgeseg import __version__
    from edgeseg.kernels import _kernels

    proc = run("--version")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"edgeseg, version {__version__}"
    kernels = next(line for line in lines if line.startswith("C kernels"))
    assert Path(_kernels.__file__).name in kernels
    assert ("no OpenMP" in kernels) != bool(_kernels.has_openmp())
    libedgeseg = next(line for line in lines if line.startswith("libedgeseg"))
    assert libedgeseg.endswith("libedgeseg.so.0") or libedgeseg.endswith("not built (make sdk)")
    libraries = next(line for line in lines if line.startswith("libraries"))
    for name in ("numpy", "onnxruntime"):
        assert f"{name} {importlib.metadata.version(name)}" in libraries


def _variables_read() -> set[str]:
    """The EDGESEG_* names the package, libedgeseg and the build read from the environment."""
    sources = [*ROOT.joinpath("edgeseg").rglob("*.py"), *ROOT.joinpath("csrc").rglob("*.c"), ROOT / "setup.py"]
    found = set()
    for path in sources:
        found |= set(re.findall(r"[\"'](EDGESEG_[A-Z][A-Z0-9_]*)[\"']", path.read_text()))
        found |= set(re.findall(r"getenv\(\"(EDGESEG_[A-Z0-9_]+)\"\)", path.read_text()))
    return found


def test_every_environment_variable_is_in_the_docs():
    section = re.search(r"^Environment variables edgeseg reads:\n(.*?)\n\n", (ROOT / "docs" / "index.md").read_text(),
                        re.S | re.M)
    assert section, "docs/index.md has no table of environment variables"
    listed = set(re.findall(r"`(EDGESEG_[A-Z0-9_]+)`", section.group(1)))
    read = _variables_read()
    assert read, "no variable found: the scan is broken"
    assert read <= listed, f"read but not in the table in docs/index.md: {sorted(read - listed)}"


def test_export_caches_under_edgeseg_cache_dir(tmp_path, monkeypatch):
    """One variable moves every cache; export's INT8 graphs stayed under ~/.cache."""
    from edgeseg.cli.export import _cache_default

    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    assert _cache_default() == tmp_path / "cache" / "export"


def test_shell_completion_of_the_entry_point():
    """The `_EDGESEG_COMPLETE` line of docs/index.md: the installed `edgeseg` completes commands and choices."""
    entry = Path(sys.executable).with_name("edgeseg")
    if not entry.exists():
        pytest.skip(f"no edgeseg entry point beside {sys.executable}")
    assert "_EDGESEG_COMPLETE=bash_source edgeseg" in (ROOT / "docs" / "index.md").read_text()

    def complete(words: str, cword: int) -> list[str]:
        env = dict(os.environ, _EDGESEG_COMPLETE="bash_complete", COMP_WORDS=words, COMP_CWORD=str(cword))
        proc = subprocess.run([str(entry)], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return [line.partition(",")[2] for line in proc.stdout.splitlines()]

    assert set(complete("edgeseg tr", 1)) == {"train", "triton"}
    # click offers a case-insensitive choice in lower case; either case is taken
    assert [c.upper() for c in complete("edgeseg triton b r --kind ", 5)] == ["KIND_GPU", "KIND_CPU"]
    script = subprocess.run([str(entry)], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, _EDGESEG_COMPLETE="bash_source")).stdout
    assert "complete " in script and "_edgeseg_completion" in script


def test_the_commands_docs_list_for_quiet_are_those_that_take_it():
    """docs/index.md names the commands --quiet silences; bench gained it and was not named."""
    line = re.search(r"\*\*`--quiet`\*\* \(([^)]*)\)", (ROOT / "docs" / "index.md").read_text())
    assert line, "docs/index.md no longer lists the commands that take --quiet"
    listed = {name.strip().strip("`") for name in line.group(1).split(",")}
    assert listed == {name for name, command in commands().items() if "--quiet" in shown_names(command)}
