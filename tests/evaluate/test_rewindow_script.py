"""benchmarks/rewindow_slices.py: the 'another hospital's export window' set behind a row of docs/results.md."""

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).parents[2]
SLICES = ROOT / "tests" / "data" / "msd_liver_slices"
SCRIPT = ROOT / "benchmarks" / "rewindow_slices.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_slices_of_the_split_are_rewritten_with_the_other_window(tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "val": ["10006"], "test": []}))
    proc = run(SLICES, split, tmp_path / "out", "--split", "val", "--window=-160,240")
    assert proc.returncode == 0, proc.stderr
    written = sorted((tmp_path / "out" / "images").iterdir())
    assert [p.stem for p in written] == sorted(p.stem for p in (SLICES / "images").glob("*_10006_*"))
    for png in written:
        hu = np.asarray(Image.open(SLICES / "images" / f"{png.stem}.jpg").convert("L"), dtype=np.float64)
        # Exact rational arithmetic, ties to even (hu = 40 gives 127.5 -> 128).
        table = {v: min(255, max(0, round(Fraction(int(v) + 160) * 255 / 400))) for v in np.unique(hu)}
        want = np.vectorize(table.get)(hu).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(Image.open(png)), want)
        assert (tmp_path / "out" / "masks" / png.name).is_file()


def test_bad_window_is_one_line_and_writes_nothing(tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"val": ["10006"]}))
    proc = run(SLICES, split, tmp_path / "out", "--window=240,-160")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith("got '240,-160'")
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
