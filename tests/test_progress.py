"""Progress on stderr as the real CLI writes it: whole lines where stderr is a log file or a pipe
(a job scheduler, systemd, CI), a live bar on a terminal, nothing with --quiet; and the error
line always on a line of its own."""

import os
import re
import subprocess
import sys

import pytest

LINE = re.compile(r"(?P<what>[^:]+): (?P<n>\d+)/(?P<total>\d+) (?P<unit>\w+) \((?P<pct>\d+)%\), (done in )?\d+ s")


def _edgeseg(args: list, tmp_path, interval: str | None = "0") -> subprocess.CompletedProcess:
    """``edgeseg ARGS`` with stderr to a pipe; ``interval`` 0 asks for a line at every step, so
    what is written does not depend on how fast this machine is."""
    env = dict(os.environ)
    env.pop("EDGESEG_PROGRESS_INTERVAL", None)
    if interval is not None:
        env["EDGESEG_PROGRESS_INTERVAL"] = interval
    return subprocess.run([sys.executable, "-m", "edgeseg", *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=600)


def _lines(stderr: str) -> list[re.Match]:
    """The progress lines of ``stderr``, each checked whole: no carriage return anywhere, every
    line ended, each one a complete progress line."""
    assert "\r" not in stderr, repr(stderr)
    assert stderr.endswith("\n"), repr(stderr)
    matches = [LINE.fullmatch(line) for line in stderr.splitlines()]
    assert all(matches), stderr
    return matches


def _synth(out, tmp_path, *extra: str, cases: int = 3) -> subprocess.CompletedProcess:
    return _edgeseg(["data", "synth", "--out", str(out), "--cases", str(cases), "--size", "16", "--slices", "2",
                     *extra], tmp_path)


def test_log_gets_whole_lines_without_carriage_returns(tmp_path):
    proc = _synth(tmp_path / "ph", tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc.stderr)
    assert [(m["what"], int(m["n"]), int(m["total"]), m["unit"], int(m["pct"])) for m in lines] == \
        [("writing phantom", k, 3, "cases", 100 * k // 3) for k in (1, 2, 3)]


def test_quiet_writes_nothing_to_stderr(tmp_path):
    proc = _synth(tmp_path / "ph", tmp_path, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def _broken_dataset(tmp_path):
    data = tmp_path / "data"
    assert _synth(data, tmp_path, "--quiet", cases=4).returncode == 0
    (data / "imagesTr" / "case_002.nii.gz").write_bytes(b"not a NIfTI file\n")
    return data


def test_error_inside_a_bar_is_the_one_line_of_a_log(tmp_path, assert_one_line_error):
    # the default interval writes no line for work this short: the error is all the log holds
    proc = _edgeseg(["data", "info", str(_broken_dataset(tmp_path))], tmp_path, interval=None)
    assert "\r" not in proc.stderr, repr(proc.stderr)
    assert_one_line_error(proc, "case_002.nii.gz")


def test_error_follows_whole_progress_lines(tmp_path):
    proc = _edgeseg(["data", "info", str(_broken_dataset(tmp_path))], tmp_path)
    assert proc.returncode == 2
    *progress, error = proc.stderr.splitlines(keepends=True)
    assert error.startswith("edgeseg: error: cannot read image") and "case_002.nii.gz" in error, proc.stderr
    # two cases read, then the third failed: no closing line claims the work was done
    assert [(int(m["n"]), int(m["total"])) for m in _lines("".join(progress))] == [(1, 4), (2, 4)]


def test_predict_reports_reading_a_series_and_writing_the_output(tmp_path, exported_bundle):
    series = tmp_path / "dicom"
    assert _edgeseg(["data", "synth", "--out", str(series), "--cases", "1", "--size", "32", "--slices", "12",
                     "--format", "dicom", "--quiet"], tmp_path).returncode == 0
    out = tmp_path / "labels.nii.gz"
    proc = _edgeseg(["predict", str(exported_bundle), str(series / "case_000"), "--out", str(out),
                     "--batch-size", "4"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and proc.stderr.endswith("\n"), repr(proc.stderr)
    last = {}
    for line in proc.stderr.splitlines():
        if (match := LINE.fullmatch(line)) is not None:
            last[match["what"]] = (int(match["n"]), int(match["total"]), match["unit"])
    files = sorted(p for p in (series / "case_000").iterdir())
    assert last == {"reading DICOM headers": (len(files), len(files), "files"),
                    "reading DICOM pixels": (12, 12, "slices"), "segmenting": (12, 12, "slices"),
                    "writing labels.nii.gz": (12, 12, "slices")}
    nib = pytest.importorskip("nibabel")
    assert nib.load(out).shape == (32, 32, 12)


def test_terminal_gets_a_live_bar_erased_at_the_end(tmp_path, in_terminal):
    text, code = in_terminal(["data", "synth", "--out", str(tmp_path / "ph"), "--cases", "3", "--size", "16",
                               "--slices", "2"], tmp_path)
    assert code == 0, text
    assert re.search(r"\rwriting phantom: +\d+%\|", text), repr(text)  # tqdm's bar, redrawn in place
    # erased: the summary line starts at the left edge, not after the bar
    summary = text.index("wrote 3 phantom cases")
    assert text[summary - 1] in "\r\n", repr(text[summary - 200:summary])


def test_ctrl_c_line_starts_its_own_line_on_a_terminal(tmp_path, in_terminal):
    pytest.importorskip("torch")
    text, code = in_terminal(["train", "--data", "phantom:cases=4,size=32,slices=8", "--size", "32", "--base", "4",
                               "--depth", "2", "--epochs", "100000", "--workers", "0", "--out", str(tmp_path / "run")],
                              tmp_path, interrupt_after="epoch 1/100000")
    assert code == 130, text
    stop = text.index("edgeseg: interrupted")
    # the line is cleared first (return, erase to the end of the line), whatever a bar drew there,
    # one drawn as the interrupt came included: the stop line starts a line of its own
    assert text[:stop].endswith("\r\x1b[K"), repr(text[stop - 200:stop])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_written_with_progress_is_the_file_nib_save_writes(tmp_path, suffix, monkeypatch, capsys):
    """The counted write goes through nibabel's own opener: byte for byte what ``nib.save``
    writes (the oracle), and every slice counted."""
    nib = pytest.importorskip("nibabel")
    import numpy as np

    from edgeseg.runtime.readers import read_input
    from edgeseg.runtime.writers import write_nifti

    assert _synth(tmp_path / "ph", tmp_path, "--quiet", cases=1).returncode == 0
    volume, _ = read_input(tmp_path / "ph" / "imagesTr" / "case_000.nii.gz")
    labels = (volume.hu > 0).astype(np.uint8)
    monkeypatch.setenv("EDGESEG_PROGRESS_INTERVAL", "0")
    write_nifti(labels, volume, tmp_path / f"counted{suffix}", progress=True)
    plain = tmp_path / f"plain{suffix}"
    nib.save(nib.load(tmp_path / f"counted{suffix}"), plain)  # the same image, saved by nibabel itself
    assert (tmp_path / f"counted{suffix}").read_bytes() == plain.read_bytes()
    counts = [(int(m["n"]), int(m["total"])) for m in _lines(capsys.readouterr().err)]
    assert counts[-1] == (volume.hu.shape[0], volume.hu.shape[0])
