"""libedgeseg and the training data's field of view: es_segment_volume_spaced, given a volume whose
FOV (rows x row spacing) lies outside the bundle's ``training_fov`` by more than the factor
edgeseg.data.field_of_view states, refuses it where EDGESEG_FOV_CHECK=refuse asks, with the words
the Python runtime uses, and segments it as before otherwise (with a warning under "warn", which
tests/capi/test_warnings.py checks).
The test bundle was trained on 192 mm phantoms; ``phantom_hu`` is 200 x 176 pixels."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.runtime import Segmenter

ES_OK, ES_EINVAL = 0, 1


def _spaced(programs, bundle, hu, spacing, tmp_path, mode):
    src, dst = tmp_path / "hu.raw", tmp_path / "labels.raw"
    hu.astype("<i2").tofile(src)
    dst.unlink(missing_ok=True)
    args = [str(programs["checks"]), "spaced", *(repr(float(s)) for s in spacing), str(bundle), "fp32",
            *(str(n) for n in hu.shape), str(src), str(dst)]
    env = {k: v for k, v in os.environ.items() if k != "EDGESEG_FOV_CHECK"} | ({"EDGESEG_FOV_CHECK": mode} if mode else {})
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    code, message = result.stdout.splitlines()[0].split("\t", 1)
    return int(code), message, np.fromfile(dst, dtype=np.uint8).reshape(hu.shape) if dst.exists() else None


def test_refusal_mode_refuses_a_volume_at_three_times_the_fov_with_pythons_words(bundle, phantom_hu, programs,
                                                                                 tmp_path):
    spacing = (2.5, 2.88, 2.88)  # 200 x 2.88 = 576 mm, 3 x 192
    code, message, labels = _spaced(programs, bundle, phantom_hu, spacing, tmp_path, "refuse")
    assert code == ES_EINVAL and labels is None, message
    assert "field of view 576 mm (200 x 2.88 mm) lies outside the 192-192 mm" in message, message
    with Segmenter.load(bundle, backend="openvino:fp32", fov_check="refuse") as seg, pytest.raises(DataError) as caught:
        seg.predict_volume(phantom_hu, spacing=spacing)
    assert str(caught.value).split(": ", 1)[1] == message.split(": ", 1)[1]


@pytest.mark.parametrize("mode", [None, "warn", "off"])
def test_other_modes_and_inputs_inside_the_range_segment_as_before(mode, bundle, phantom_hu, programs, tmp_path):
    with Segmenter.load(bundle, backend="openvino:fp32", fov_check="off") as seg:
        expected = seg.predict_volume(phantom_hu)
    for spacing in ((2.5, 2.88, 2.88), (2.5, 0.96, 0.96)):  # 3 x the FOV, and 192 mm
        code, message, labels = _spaced(programs, bundle, phantom_hu, spacing, tmp_path, mode)
        assert code == ES_OK, message
        assert np.array_equal(labels, expected)
    code, message, labels = _spaced(programs, bundle, phantom_hu, (2.5, 0.96, 0.96), tmp_path, "refuse")
    assert code == ES_OK and np.array_equal(labels, expected), message
