"""benchmarks/: the pytest-benchmark suites collect as docs/benchmarking.md says they run."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _collected(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [line for line in proc.stdout.splitlines() if "::" in line]


@pytest.mark.parametrize("suite", ["bench_fit.py", "bench_components.py"])
def test_a_suite_named_on_the_command_line_runs_each_benchmark_once(suite):
    """`pytest benchmarks/bench_fit.py --benchmark-only` (as the docs run it) timed every case
    twice and listed each row twice in one group."""
    ids = _collected(f"benchmarks/{suite}")
    assert ids and len(ids) == len(set(ids)), ids
    assert ids == [i for i in _collected("benchmarks") if i.startswith(f"benchmarks/{suite}::")]
