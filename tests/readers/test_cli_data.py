"""``edgeseg data synth`` and ``edgeseg data info`` through click."""

from __future__ import annotations


from edgeseg.cli.data import command
from edgeseg.errors import DataError
from tests.guarded_cli import GuardedCliRunner


def test_synth_then_info(tmp_path):
    runner = GuardedCliRunner()
    out = tmp_path / "ds"
    result = runner.invoke(command, ["synth", "--out", str(out), "--cases", "3", "--seed", "1",
                                     "--size", "32", "--slices", "6", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 phantom cases of 6x32x32 voxels" in result.stdout
    assert len(list((out / "imagesTr").glob("*.nii.gz"))) == 3

    result = runner.invoke(command, ["info", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["case", "shape", "(z,y,x)"]
    rows = [line.split() for line in lines[2:-1]]
    assert [row[0] for row in rows] == ["case_000", "case_001", "case_002"]
    assert all(row[1] == "6x32x32" and row[2] == "2.5x6x6" for row in rows)
    assert all(row[6].startswith("1:") for row in rows)  # liver voxels counted
    assert lines[-1] == "3 cases"


def test_info_error_is_an_edgeseg_error(tmp_path):
    result = GuardedCliRunner().invoke(command, ["info", str(tmp_path / "missing")])
    assert isinstance(result.exception, DataError)
    assert "data folder not found" in str(result.exception)


def test_main_group_prints_one_line(tmp_path):
    from edgeseg.cli.main import cli

    result = GuardedCliRunner().invoke(cli, ["data", "info", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"edgeseg: error: data folder not found: {tmp_path / 'missing'}"]


def _terminal_lines(stderr: str) -> list[str]:
    """The lines a terminal shows for ``stderr``: a carriage return moves back to the start of
    the line, so what a progress bar writes there is overwritten by what follows it; ESC [K
    (erase to the end of the line) right after it clears the line."""
    shown = []
    for line in stderr.split("\n"):
        screen = ""
        for part in line.split("\r"):
            if part.startswith("\x1b[K"):
                screen, part = "", part[len("\x1b[K"):]
            screen = part + screen[len(part):]
        if screen.strip():
            shown.append(screen.rstrip())
    return shown


def test_a_refusal_after_the_progress_bar_started_shows_one_line(tmp_path, in_terminal):
    """``data info`` without --quiet at a terminal: the bar of the cases read so far stayed on
    the screen above the error, two lines where a refusal is one."""
    out = tmp_path / "ds"
    assert GuardedCliRunner().invoke(command, ["synth", "--out", str(out), "--cases", "3", "--size", "32", "--slices", "4",
                                               "--quiet"]).exit_code == 0
    last = out / "imagesTr" / "case_002.nii.gz"
    last.write_bytes(last.read_bytes()[:100])  # the third case is truncated, after two were read
    stderr, code = in_terminal(["data", "info", str(out)], tmp_path)
    assert code == 2, stderr
    assert "reading NIfTI" in stderr  # the bar was drawn: this is the case under test
    shown = _terminal_lines(stderr)
    assert len(shown) == 1 and shown[0].startswith("edgeseg: error: ") and "case_002" in shown[0], shown
