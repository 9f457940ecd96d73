"""``evaluate_checkpoint(workers=...)`` from Python: None is the command's default (``--workers``
left out), a negative number is refused before anything is read, not run as ``workers=0``."""

from __future__ import annotations

import json

import pytest

from edgeseg.errors import EdgesegError
from edgeseg.evaluate.case_metrics import default_workers
from edgeseg.evaluate.model_eval import evaluate_checkpoint

DATA = "phantom:cases=2,size=64,slices=8,seed=3"


@pytest.mark.parametrize("workers", [-1, -4])
def test_a_negative_worker_count_is_refused(trained_checkpoint, tmp_path, workers):
    with pytest.raises(EdgesegError, match=rf"^workers must be >= 0 .* got {workers}$") as refused:
        evaluate_checkpoint(trained_checkpoint, DATA, split="all", out=tmp_path / "out", progress=False,
                            workers=workers)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_none_is_the_commands_default(trained_checkpoint, tmp_path):
    default = evaluate_checkpoint(trained_checkpoint, DATA, split="all", out=tmp_path / "none", progress=False,
                                  workers=None)
    given = evaluate_checkpoint(trained_checkpoint, DATA, split="all", out=tmp_path / "given", progress=False,
                                workers=default_workers())
    assert default["table"] == given["table"]
    one, other = (json.loads((tmp_path / name / "eval.json").read_text()) for name in ("none", "given"))
    assert one["cases"] == other["cases"] and len(one["cases"]) == 2
