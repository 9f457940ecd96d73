"""edgeseg.hpp's warning handlers at their edges (wrapper_warnings.cpp), in a plain build and under
AddressSanitizer + UBSan with leak checks: a handler that replaces itself while it runs, what a
handler throws during a C call made on ``get()`` (no wrapper call to rethrow it), a handler's own
nested wrapper call, and a Segmenter moved into another whose source is gone before it segments.
A single slice at 3 x the test bundle's training field of view warns on every call."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
OUTSIDE = (2.5, 2.88, 2.88)
EXPECTED = {
    # the first handler finishes (its capture alive) after replacing itself; the next call hears the second
    "reenter": [["heard", "first 200"], ["heard", "second 1"]],
    # dropped, not thrown by the next wrapper call, and the next handler is not silenced
    "raw-throw": [["raw", "0"], ["wrapper", "nothing thrown", "1"]],
    "nested-throw": [["outer", "nothing thrown", "inner"], ["again", "inner"]],
    "move": [["heard", "constructed 1"], ["heard", "assigned 1"], ["heard", "assigned 1"]],
}


@pytest.fixture(scope="module", params=["plain", "sanitized"])
def driver(request, build_tools, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp(f"wrapper-warnings-{request.param}")
    env = {k: v for k, v in os.environ.items() if k != "EDGESEG_FOV_CHECK"}
    if request.param == "plain":
        sdk, extra = request.getfixturevalue("sdk"), ()
    else:
        sdk, extra = request.getfixturevalue("asan_sdk"), (*build_tools.san_flags.split(), "-DES_DLOPEN_SHIM", "-ldl")
        env |= {"ASAN_OPTIONS": "detect_leaks=1:exitcode=23",
                "LSAN_OPTIONS": f"suppressions={HERE / 'lsan.supp'}:print_suppressions=0",
                "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    exe = build_tools.compile(sdk, HERE / "wrapper_warnings.cpp", out / "wrapper_warnings", extra=extra)
    return exe, env


@pytest.mark.parametrize("case", list(EXPECTED))
def test_the_wrappers_handlers_at_their_edges(case, driver, bundle, phantom_hu, tmp_path):
    exe, env = driver
    phantom_hu[:1].astype("<i2").tofile(tmp_path / "slice.raw")
    rows, cols = phantom_hu.shape[1:]
    result = subprocess.run([str(exe), case, str(bundle), str(rows), str(cols), str(tmp_path / "slice.raw"),
                             *map(repr, OUTSIDE)], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "Sanitizer" not in result.stderr, result.stderr[-4000:]
    assert [line.split("\t") for line in result.stdout.splitlines()] == EXPECTED[case]
