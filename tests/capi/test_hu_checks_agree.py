"""The Python runtime (``Segmenter.predict``) and libedgeseg (``es_segment_slice`` through
``capi_checks typed``) take and refuse the same slices of values that may not be HU, for each
dtype the kernels take and a window starting below 0 and at 0. The expected answer of each row is
the rule of docs/runtime.md ("What the runtime refuses") worked out by hand: refused where no
0.1 % of the voxels (and at least one) lie in -1200..-50 HU, and the window starts below 0 or the
values pass 1000; a constant image is taken."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.runtime import Segmenter

ES_OK, ES_EDATA = 0, 18
CODES = {np.uint8: 0, np.int16: 1, np.uint16: 2, np.float32: 3}
SIDE = 64  # 4096 voxels: 0.1 % of them is 4.096, so 5 voxels are enough and 4 are not


def _slice(low: float, high: float, dtype, *, air: int = 0, at: float = -500.0) -> np.ndarray:
    """A slice ramping from ``low`` to ``high``, with its first ``air`` voxels set to ``at``."""
    values = np.linspace(low, high, SIDE * SIDE).reshape(SIDE, SIDE)
    values.flat[:air] = at
    return values.astype(dtype)


def _stored_with_one_negative() -> np.ndarray:
    stored = _slice(24, 1300, np.int16)  # HU + 1024 of a body: soft tissue, bone
    stored[5, 5] = -1
    return stored


def _body() -> np.ndarray:
    hu = _slice(-30, 300, np.int16)
    hu[:, :16] = -1000  # air round the body
    return hu


# (name, slice, taken by a window starting at -100, taken by a window starting at 0)
CASES = [
    ("uint8-picture", _slice(0, 255, np.uint8), False, True),
    ("int16-body-hu", _body(), True, True),
    ("int16-stored-one-pixel-at-minus-1", _stored_with_one_negative(), False, False),
    ("int16-hu-one-pixel-at-minus-1", _slice(0, 300, np.int16, air=1, at=-1), False, True),
    ("uint16-stored-values", _slice(24, 1084, np.uint16), False, False),
    ("float32-reaching-1000", _slice(0, 1000, np.float32), False, True),
    ("float32-reaching-1000.5", _slice(0, 1000.5, np.float32), False, False),
    ("float32-liver-crop", _slice(32, 92, np.float32), False, True),
    ("int16-constant", np.full((SIDE, SIDE), 40, np.int16), True, True),
    ("uint8-constant-0", np.full((SIDE, SIDE), 0, np.uint8), True, True),
    ("int16-air-0.1-percent", _slice(0, 1200, np.int16, air=5), True, True),
    ("int16-air-just-under-0.1-percent", _slice(0, 1200, np.int16, air=4), False, False),
    ("float32-air-0.1-percent-at-the-edge", _slice(0, 300, np.float32, air=5, at=-1200), True, True),
    ("float32-padding-not-air", _slice(0, 1200, np.float32, air=400, at=-2000), False, False),
]


@pytest.fixture(scope="module")
def bundles(exported_bundle, tmp_path_factory) -> dict[float, object]:
    """The suite's bundle with its window edited to start at -100 and at 0."""
    out = {}
    for low in (-100.0, 0.0):
        copy = shutil.copytree(exported_bundle, tmp_path_factory.mktemp("bundle") / "bundle")
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["spec"]["window"] = [low, 400.0]
        (copy / "manifest.json").write_text(json.dumps(manifest))
        out[low] = copy
    return out


@pytest.fixture(scope="module")
def segmenters(bundles):
    """The Python runtime on each edited bundle, loaded once."""
    loaded = {low: Segmenter.load(path, backend="openvino:fp32") for low, path in bundles.items()}
    yield loaded
    for seg in loaded.values():
        seg.close()


@pytest.mark.parametrize("window_low", [-100.0, 0.0])
@pytest.mark.parametrize("name, hu, below_zero, at_zero", CASES, ids=[case[0] for case in CASES])
def test_both_runtimes_take_and_refuse_the_same_slices(name, hu, below_zero, at_zero, window_low, bundles,
                                                       segmenters, run_checks, tmp_path):
    expected = below_zero if window_low < 0 else at_zero
    said, code, message = _answers(segmenters[window_low], bundles[window_low], hu, hu, run_checks, tmp_path)
    python = said is None
    assert code in (ES_OK, ES_EDATA), message
    assert (python, code == ES_OK) == (expected, expected), (said, message)
    if not expected:
        assert "RescaleIntercept" in said and message.startswith(said), (said, message)


def _answers(seg, bundle, hu: np.ndarray, sent: np.ndarray, run_checks, tmp_path) -> tuple[str | None, int, str]:
    """(Python's refusal or None, libedgeseg's status and message) for ``hu``, of which C gets ``sent``."""
    try:
        seg.predict(hu)
        said = None
    except DataError as exc:
        said = str(exc)
    sent.tofile(tmp_path / "hu.raw")
    code, message, _ = run_checks("typed", bundle, CODES[sent.dtype.type], *sent.shape, tmp_path / "hu.raw")
    return said, code, message


@pytest.mark.parametrize("window_low", [-100.0, 0.0])
@pytest.mark.parametrize("values, below_zero, at_zero", [
    ([[-1e-50, 300], [200, 100]], False, True),  # -0.0..300 in float32: no air (was taken: -1e-50 < 0)
    ([[0, 1e-50], [0, 0]], True, True),  # 0.0 in float32: constant (was refused as normalised)
], ids=["minus-1e-50", "plus-1e-50"])
def test_float64_is_checked_as_the_float32_both_runtimes_see(values, below_zero, at_zero, window_low, bundles,
                                                             segmenters, run_checks, tmp_path):
    hu = np.tile(np.array(values, np.float64), (SIDE // 2, SIDE // 2))
    sent = hu.astype(np.float32)
    said, code, message = _answers(segmenters[window_low], bundles[window_low], hu, sent, run_checks, tmp_path)
    expected = below_zero if window_low < 0 else at_zero
    assert (said is None, code == ES_OK) == (expected, expected), (said, message)
    if not expected:
        assert message.startswith(said) and "-0..300" in said, (said, message)
