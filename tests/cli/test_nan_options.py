"""NaN passes click's FloatRange (every comparison with it is false): `serve --timeout nan` served
with a timeout that never expires, `bench-serve --seconds nan` ended in a traceback from
time.sleep. Each such option is refused in one line, before its command reads anything."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("args,fragment", [
    (["serve", "{missing}", "--timeout", "nan"], "Invalid value for '--timeout': 'nan' is not a number of seconds"),
    (["predict", "{missing}", "{missing}", "--timeout", "NaN"],
     "Invalid value for '--timeout': 'NaN' is not a number of seconds"),
    (["bench-serve", "{missing}", "--duration", "nan"], "Invalid value for '--duration': 'nan' is not a number of seconds"),
    (["bench-serve", "{missing}", "--warmup", "nan"], "Invalid value for '--warmup': 'nan' is not a number of seconds"),
])
def test_nan_is_refused_in_one_line(tmp_path, args, fragment, assert_one_line_error):
    missing = str(tmp_path / "missing")
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", *(a.format(missing=missing) for a in args)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert_one_line_error(done, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
