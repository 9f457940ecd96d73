"""The Python samples of docs/data.md, docs/kernels.md and docs/runtime.md, run as written: the
names a sample leaves to the reader (a slice of HU, a batch of logits) are given real values, and
what its comments promise (shapes, dtypes, the values fit_box returns, the error it raises) is
checked against the result."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from edgeseg.errors import DataError

DOCS = Path(__file__).resolve().parents[2] / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", (DOCS / page).read_text(), flags=re.S | re.M)


def test_preprocess_spec_sample_round_trips():
    block = python_blocks("data.md")[0]
    names: dict = {}
    exec(block, names)
    spec = names["spec"]
    assert re.fullmatch(r"[0-9a-f]{16}", spec.hash)
    # the sample's last line is an equality the page says holds
    assert eval(block.strip().splitlines()[-1], names) is True


def test_fit_box_sample_returns_what_its_comments_say():
    from edgeseg import PreprocessSpec

    names: dict = {"PreprocessSpec": PreprocessSpec}
    checked = 0
    for line in python_blocks("data.md")[1].strip().splitlines():
        code, _, comment = line.partition("#")
        if not comment:
            exec(code, names)
            continue
        expected, _, message = comment.strip().partition(": ")
        if expected == "DataError":
            with pytest.raises(DataError, match=re.escape(message.strip())):
                eval(code, names)
        else:
            assert eval(code, names) == ast.literal_eval(expected), line
        checked += 1
    assert checked == 4


def test_kernels_sample_shapes():
    names: dict = {"hu": np.random.default_rng(0).integers(-200, 400, (512, 512)).astype(np.int16),
                   "logits": np.random.default_rng(1).standard_normal((3, 2, 256, 256)).astype(np.float32)}
    exec(python_blocks("kernels.md")[0], names)
    assert names["x"].shape == (1, 1, 256, 256) and names["x"].dtype == np.float32
    assert names["labels"].shape == (3, 512, 512) and names["labels"].dtype == np.uint8


def test_runtime_sample_on_a_bundle(exported_bundle):
    from edgeseg.data.phantom import synth_phantom

    block = python_blocks("runtime.md")[0]
    assert '"runs/demo/bundle"' in block
    rows, cols = json.loads((exported_bundle / "manifest.json").read_text())["spec"]["size"]
    volume = synth_phantom("case_000", seed=3, shape=(4, rows + 32, cols + 16))  # "any H, W"
    names: dict = {"slice_hu": volume.hu[2], "volume": volume, "batch": np.zeros((2, 1, rows, cols), np.float32)}
    exec(block.replace('"runs/demo/bundle"', repr(str(exported_bundle))), names)
    assert names["mask"].shape == (rows + 32, cols + 16) and names["mask"].dtype == np.uint8
    assert names["labels"].shape == volume.hu.shape and names["labels"].dtype == np.uint8
    assert names["logits"].shape == (2, 2, rows, cols) and names["logits"].dtype == np.float32
    assert re.fullmatch(r"[a-z_-]+:(fp32|fp16|int8)", names["seg"].backend)

