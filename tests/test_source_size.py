"""No source file of the project over 400 lines (the vendored cJSON aside): a file that grows
past that is split by what it does, not left to grow."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 400
SUFFIXES = (".py", ".pyx", ".pxd", ".c", ".h", ".sh")


def _tracked_sources() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout.strip():
        names = listed.stdout.splitlines()
    else:  # an unpacked source tree without git
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    return [ROOT / n for n in names
            if n.endswith(SUFFIXES) and "third_party" not in Path(n).parts
            and n.split("/")[0] in ("edgeseg", "csrc", "tests", "benchmarks", "export", "setup.py")
            and (ROOT / n).is_file()
            and not (n.endswith(".c") and (ROOT / n).with_suffix(".pyx").exists())]  # Cython's output


def test_no_source_file_is_over_400_lines():
    sources = _tracked_sources()
    assert len(sources) > 100  # the listing found the tree
    too_long = {str(p.relative_to(ROOT)): n for p in sources
                if (n := len(p.read_text(encoding="utf-8", errors="replace").splitlines())) > LIMIT}
    assert too_long == {}
