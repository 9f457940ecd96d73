"""libedgeseg's warning channel: where the Python runtime logs a warning about input it still
segments, es_set_warning_callback and es_last_warnings give the same text, and the call segments
as before. The one such warning libedgeseg can detect (the others need a DICOM series or a NIfTI
header, which the C API never sees; docs/c-api.md lists them) is the field of view outside the
bundle's ``training_fov``: the test bundle was trained on 192 mm phantoms, ``phantom_hu`` is
200 x 176 pixels, so 2.88 mm pixels make 576 mm."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.runtime import Segmenter

HERE = Path(__file__).resolve().parent
ES_OK, ES_EINVAL, ES_WARN_FIELD_OF_VIEW = 0, 1, 1
OUTSIDE = (2.5, 2.88, 2.88)  # 576 mm: 3 x the training FOV
INSIDE = (2.5, 0.96, 0.96)  # 192 mm


@pytest.fixture(scope="module")
def warning_checks(sdk, build_tools, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("warning-checks")
    return build_tools.compile(sdk, HERE / "warning_checks.c", out / "warning_checks", extra=("-pthread",))


def _env(mode: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGESEG_FOV_CHECK"}
    return env | ({"EDGESEG_FOV_CHECK": mode} if mode is not None else {}) | (extra or {})


def _records(program: Path, *args, mode: str | None = None, env: dict[str, str] | None = None) -> list[list[str]]:
    result = subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=600,
                            env=_env(mode, env))
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert result.stderr == ""  # libedgeseg prints nothing, warnings included
    return [line.split("\t") for line in result.stdout.splitlines()]


def _calls(program, bundle, hu, spacing, tmp_path, mode=None, env=None) -> tuple[list[list[list[str]]], np.ndarray | None]:
    """Run ``warning_checks calls``: the records of each of its eight calls, and the first's labels."""
    src, dst = tmp_path / "hu.raw", tmp_path / "labels.raw"
    hu.astype("<i2").tofile(src)
    dst.unlink(missing_ok=True)
    records = _records(program, "calls", *(repr(float(s)) for s in spacing), bundle, "fp32", *hu.shape, src, dst,
                       mode=mode, env=env)
    assert records[:2] == [["before", "0"], ["set", str(ES_OK)]], records
    assert records[-1] == ["null", str(ES_EINVAL), "0"], records
    calls: list[list[list[str]]] = [[]]
    for record in records[2:-1]:  # a call's callbacks come before it returns, then its own records
        if record[0] in ("callback", "call") and calls[-1] and calls[-1][-1][0] in ("call", "last"):
            calls.append([])
        calls[-1].append(record)
    labels = np.fromfile(dst, dtype=np.uint8).reshape(hu.shape) if dst.exists() else None
    return calls, labels


def _python_warnings(bundle, hu, spacing, caplog, mode=None) -> tuple[list[str], np.ndarray]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgeseg.runtime.segmenter"), \
            Segmenter.load(bundle, backend="openvino:fp32", fov_check=mode) as seg:
        labels = seg.predict_volume(hu, spacing=spacing)
    return [r.getMessage() for r in caplog.records if r.name == "edgeseg.runtime.segmenter"], labels


@pytest.mark.parametrize("mode", [None, "warn", ""])  # set but empty: warn, as in Python
def test_a_volume_outside_the_training_fov_warns_with_pythons_text_and_is_segmented(
        mode, bundle, phantom_hu, warning_checks, tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("EDGESEG_FOV_CHECK", raising=False)
    python, expected = _python_warnings(bundle, phantom_hu, OUTSIDE, caplog, mode)
    assert len(python) == 1 and "field of view 576 mm (200 x 2.88 mm)" in python[0], python
    calls, labels = _calls(warning_checks, bundle, phantom_hu, OUTSIDE, tmp_path, mode)
    first, again, one_slice, unheard, no_spacing, warned, no_slices = calls
    # the callback (es_last_warnings already holds the call's list inside it), then the call's own list
    assert first == [["callback", str(ES_WARN_FIELD_OF_VIEW), "1", python[0]], ["call", str(ES_OK), "1"],
                     ["last", str(ES_WARN_FIELD_OF_VIEW), python[0]]]
    assert np.array_equal(labels, expected)  # segmented all the same, as Python does
    assert again == first  # every call gives it again (Python logs each text once per segmenter)
    assert one_slice == [["call", str(ES_OK), "0"]]  # a call without a spacing is never judged
    assert unheard == [["call", str(ES_OK), "1"], ["last", str(ES_WARN_FIELD_OF_VIEW), python[0]]]  # callback removed
    assert warned == unheard
    # a refused call after a warned one leaves no warnings (es_last_warnings gave the earlier call's)
    assert no_spacing == [["call", str(ES_EINVAL), "0"]] and no_slices == [["call", str(ES_EINVAL), "0"]]


def _comma_locale(tmp_path) -> dict[str, str]:
    """de_DE.UTF-8 (decimal comma), compiled into ``tmp_path`` by localedef, as LOCPATH and LC_ALL."""
    if shutil.which("localedef") is None:
        pytest.skip("localedef is not installed")
    tmp_path.mkdir()
    made = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", str(tmp_path / "de_DE.UTF-8")],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot compile de_DE.UTF-8: {made.stderr.strip()}")
    return {"LOCPATH": str(tmp_path), "LC_ALL": "de_DE.UTF-8"}


def test_a_comma_decimal_locale_changes_neither_the_text_nor_the_manifest(bundle, phantom_hu, warning_checks, tmp_path,
                                                                         caplog, monkeypatch):
    """An application that called setlocale(LC_ALL, "") under de_DE.UTF-8 (the driver does, before
    es_open): the text keeps Python's "2.88 mm" (not "2,88 mm"), and the manifest's numbers read as
    they should (the same labels as Python's)."""
    monkeypatch.delenv("EDGESEG_FOV_CHECK", raising=False)
    env = _comma_locale(tmp_path / "locale")
    probe = subprocess.run([sys.executable, "-c", "import locale; locale.setlocale(locale.LC_ALL, ''); "
                            "print(locale.format_string('%g', 2.88))"], capture_output=True, text=True, env=_env(None, env))
    assert probe.stdout == "2,88\n", probe.stderr  # the locale is real: a locale-following %g writes a comma
    python, expected = _python_warnings(bundle, phantom_hu, OUTSIDE, caplog)
    calls, labels = _calls(warning_checks, bundle, phantom_hu, OUTSIDE, tmp_path, env=env)
    assert calls[0] == [["callback", str(ES_WARN_FIELD_OF_VIEW), "1", python[0]], ["call", str(ES_OK), "1"],
                        ["last", str(ES_WARN_FIELD_OF_VIEW), python[0]]]
    assert np.array_equal(labels, expected)


@pytest.mark.parametrize("spacing, mode", [(INSIDE, None), (OUTSIDE, "off")])
def test_no_warning_inside_the_range_or_with_the_check_off(spacing, mode, bundle, phantom_hu, warning_checks, tmp_path,
                                                          caplog, monkeypatch):
    monkeypatch.delenv("EDGESEG_FOV_CHECK", raising=False)
    python, expected = _python_warnings(bundle, phantom_hu, spacing, caplog, mode)
    assert python == []
    calls, labels = _calls(warning_checks, bundle, phantom_hu, spacing, tmp_path, mode)
    done, refused = [["call", str(ES_OK), "0"]], [["call", str(ES_EINVAL), "0"]]
    assert calls == [done] * 4 + [refused, done, refused]
    assert np.array_equal(labels, expected)


def test_a_refusal_is_no_warning(bundle, phantom_hu, warning_checks, tmp_path):
    """EDGESEG_FOV_CHECK=refuse: the call fails with the text (test_training_fov.py) and gives no warning."""
    calls, labels = _calls(warning_checks, bundle, phantom_hu, OUTSIDE, tmp_path, "refuse")
    assert calls[:2] == [[["call", str(ES_EINVAL), "0"]]] * 2 and labels is None


def test_threads_sharing_a_segmenter_each_hear_their_own_calls(bundle, phantom_hu, warning_checks, tmp_path):
    """The callback runs on the thread whose call warned: the odd threads (outside the FOV) hear each
    of their calls once, the even ones (inside) none, while all share one segmenter."""
    phantom_hu[:1].astype("<i2").tofile(tmp_path / "slice.raw")
    rows, cols = phantom_hu.shape[1:]
    records = _records(warning_checks, "threads", 4, 3, *OUTSIDE, bundle, rows, cols, tmp_path / "slice.raw")
    assert records == [["thread", str(i), str(3 * (i % 2)), "0"] for i in range(4)]


def test_callbacks_replaced_while_threads_warn_are_each_called_with_their_own_calls_list(bundle, phantom_hu,
                                                                                      warning_checks, tmp_path):
    """The main thread swaps the callback's ``user`` for a fresh one and frees the old as soon as
    es_set_warning_callback returns, while four threads segment (two of them outside the FOV):
    every warning reaches exactly one live ``user`` (a use after free is a crash here and an
    AddressSanitizer report in test_sanitizers.py), and es_last_warnings inside the callback gives
    that call's warning, never the empty list of another thread's call that finished meanwhile."""
    phantom_hu[:1].astype("<i2").tofile(tmp_path / "slice.raw")
    rows, cols = phantom_hu.shape[1:]
    records = _records(warning_checks, "swap", 4, 6, *OUTSIDE, bundle, rows, cols, tmp_path / "slice.raw")
    assert records == [["swap", str(2 * 6), "0", "0"]]
