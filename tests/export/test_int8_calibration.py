"""INT8 calibration: stratified slices, and a cache that never serves a stale graph."""

import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.export.int8 import stratify_slices, load_calibration, quantize_int8
from edgeseg.spec import PreprocessSpec

SPEC = PreprocessSpec(window=(0.0, 255.0), size=(64, 64))


def test_stratified_choice_balances_target_and_spans_intensity():
    rng = np.random.default_rng(0)
    keys = [(bool(i % 5 == 0), float(v)) for i, v in enumerate(rng.uniform(-50, 300, 200))]
    chosen = stratify_slices(keys, 20)
    flags = [keys[i][0] for i in chosen]
    assert len(chosen) == 20 and flags.count(True) == 10 and flags.count(False) == 10
    for flag in (True, False):
        group = [v for f, v in keys if f is flag]
        picked = [keys[i][1] for i in chosen if keys[i][0] is flag]
        assert min(picked) == min(group) and max(picked) == max(group)  # both ends of the HU range


def test_calibration_set_from_phantom_reports_what_it_drew():
    calib = load_calibration("phantom:cases=2,size=64,slices=16,seed=3", SPEC, 12, {"liver": [1]})
    assert calib.images.shape == (12, 1, 64, 64) and calib.images.dtype == np.float32
    assert calib.summary["with_target"] + calib.summary["without_target"] == 12
    assert calib.summary["with_target"] >= 4 and calib.summary["without_target"] >= 4


@pytest.fixture
def fp32_onnx(bundle, tmp_path):
    import shutil

    path = tmp_path / "model.onnx"
    shutil.copyfile(bundle["bundle"] / "model.onnx", path)
    return path


def test_cache_hits_only_for_same_model_data_and_spec(fp32_onnx, tmp_path):
    cache = tmp_path / "cache"
    data_a = load_calibration("phantom:cases=2,size=64,slices=8,seed=3", SPEC, 8)
    data_b = load_calibration("phantom:cases=2,size=64,slices=8,seed=4", SPEC, 8)
    first = quantize_int8(fp32_onnx, tmp_path / "a.onnx", data_a, SPEC, "minmax", cache, progress=False)
    again = quantize_int8(fp32_onnx, tmp_path / "a2.onnx", data_a, SPEC, "minmax", cache, progress=False)
    assert (first["cache"], again["cache"]) == ("miss", "hit")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "a2.onnx").read_bytes()
    other_data = quantize_int8(fp32_onnx, tmp_path / "b.onnx", data_b, SPEC, "minmax", cache, progress=False)
    assert other_data["cache"] == "miss" and other_data["data_hash"] != first["data_hash"]
    wider = PreprocessSpec(window=(-100.0, 255.0), size=(64, 64))
    other_spec = quantize_int8(fp32_onnx, tmp_path / "c.onnx", data_a, wider, "minmax", cache, progress=False)
    assert other_spec["cache"] == "miss" and other_spec["spec_hash"] != first["spec_hash"]
    other_method = quantize_int8(fp32_onnx, tmp_path / "d.onnx", data_a, SPEC, "percentile", cache, progress=False)
    assert other_method["cache"] == "miss"


def test_a_damaged_cache_entry_is_quantised_again(fp32_onnx, tmp_path):
    """A cached graph that is not the one its record describes (cut short, overwritten) is a miss,
    not a copy into the bundle that fails to parse later."""
    cache = tmp_path / "cache"
    data = load_calibration("phantom:cases=2,size=64,slices=8,seed=3", SPEC, 8)
    first = quantize_int8(fp32_onnx, tmp_path / "a.onnx", data, SPEC, "minmax", cache, progress=False)
    graph = cache / f"int8-{first['cache_key']}.onnx"
    good = graph.read_bytes()
    for damage in (good[: len(good) // 2], b"garbage"):
        graph.write_bytes(damage)
        again = quantize_int8(fp32_onnx, tmp_path / "b.onnx", data, SPEC, "minmax", cache, progress=False)
        assert again["cache"] == "miss"
        assert (tmp_path / "b.onnx").read_bytes() == good and graph.read_bytes() == good
    (cache / f"int8-{first['cache_key']}.json").unlink()  # a graph without its record
    assert quantize_int8(fp32_onnx, tmp_path / "c.onnx", data, SPEC, "minmax", cache, progress=False)["cache"] == "miss"


def test_held_out_cases_are_left_out_of_calibration():
    source = "phantom:cases=3,size=64,slices=4,seed=3"
    everything = load_calibration(source, SPEC, 100)
    assert everything.summary["cases"] == 3 and everything.summary["slices"] == 12
    from edgeseg.data import open_dataset

    held_out = {open_dataset(source)[0].case_id}
    rest = load_calibration(source, SPEC, 100, exclude_cases=held_out)
    assert rest.summary["cases"] == 2 and rest.summary["slices"] == 8 and rest.data_hash != everything.data_hash


def test_npy_calibration_of_another_spec_is_refused(tmp_path):
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((4, 1, 32, 32), np.float32))
    with pytest.raises(DataError, match=r"shape \[4, 1, 32, 32\]"):
        load_calibration(str(small), SPEC, 4)
    wide = tmp_path / "wide.npy"
    np.save(wide, np.full((4, 1, 64, 64), 3.0, np.float32))  # [0, 1] is all window 0..255 can produce
    with pytest.raises(DataError, match="another spec"):
        load_calibration(str(wide), SPEC, 4)


def _npy_claiming(path, shape, descr="<f4"):
    """An .npy file whose header claims ``shape`` over 4 KiB of data."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": descr, "fortran_order": False, "shape": shape})
        handle.write(bytes(4096))
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: np.save(p, np.full((2, 1, 64, 64), np.nan, np.float32)), "holds NaN or infinite values"),
    (lambda p: np.save(p, np.full((2, 1, 64, 64), np.inf, np.float32)), "holds NaN or infinite values"),
    (lambda p: np.save(p, np.zeros((2, 1, 64, 64), np.complex64)), "holds complex64 values"),
    (lambda p: np.save(p, np.zeros((2, 1, 64, 64), bool)), "holds bool values"),
    # 15 TiB claimed: refused from the header, before numpy allocates it
    (lambda p: _npy_claiming(p, (10**9, 1, 64, 64)), "header field shape claims 16384000000000 bytes"),
], ids=["nan", "inf", "complex", "bool", "header-lie"])
def test_npy_calibration_that_holds_no_slices_is_refused(tmp_path, make, message):
    path = tmp_path / "calib.npy"
    make(path)
    with pytest.raises(DataError, match=message):
        load_calibration(str(path), SPEC, 4)
