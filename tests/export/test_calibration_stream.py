"""INT8 calibration slices are drawn reading one case at a time: the same slices, in the same
order, with the same data hash and summary as when every case was held at once (so the
manifest's calibration record and the quantised-graph cache key stay as they were), and a peak
that does not grow with the number of cases. Peaks are measured with tracemalloc, which sees
numpy's allocations."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from edgeseg.data import open_dataset, write_phantom_dataset
from edgeseg.data.phantom import phantom_geometry
from edgeseg.data.slice_set import check_window, preprocess_stack, volume_classes
from edgeseg.errors import DataError
from edgeseg.export.int8 import classes_present, load_calibration, stratify_slices
from edgeseg.spec import PreprocessSpec

SPEC = PreprocessSpec(window=(-1000.0, 200.0), size=(64, 64))
CHEST_LABELS = {"ggo": [1], "consolidation": [2]}


def _all_at_once(source, spec, count, label_values=None, exclude_cases=frozenset()):
    """The selection as it was made with every case in memory: (images, data hash, summary)."""
    volumes = [v for v in open_dataset(source) if v.case_id not in exclude_cases]
    if not volumes:
        raise DataError(f"calibration data {source} holds no slices outside the held-out cases")
    keys, picks = [], []
    for vol in volumes:
        check_window(vol, spec)
        target = None
        if vol.label is not None:
            target = volume_classes(vol, label_values) if label_values else (vol.label > 0).astype(np.uint8)
        low, high = spec.window
        means = np.clip(vol.hu, low, high).mean(axis=(1, 2))
        for k in range(vol.num_slices):
            keys.append((None if target is None else classes_present(target[k]), float(means[k])))
            picks.append((vol, k))
    chosen = stratify_slices(keys, count)
    digest = hashlib.sha256()
    for i in chosen:
        vol, k = picks[i]
        digest.update(f"{vol.case_id}:{k}:".encode())
        digest.update(np.ascontiguousarray(vol.hu[k], dtype=np.float32).tobytes())
    images = np.concatenate([preprocess_stack(picks[i][0].hu[picks[i][1] : picks[i][1] + 1], spec) for i in chosen])
    flags = [keys[i][0] for i in chosen]
    summary = {"slices": len(chosen), "cases": len({picks[i][0].case_id for i in chosen}),
               "with_target": sum(bool(f) for f in flags), "without_target": sum(f == () for f in flags),
               "unlabelled": sum(f is None for f in flags), "excluded_cases": len(exclude_cases),
               "mean_hu_range": [min(keys[i][1] for i in chosen), max(keys[i][1] for i in chosen)],
               "case_ids": sorted({picks[i][0].case_id for i in chosen})}
    if any(f and max(f) > 1 for f in flags):
        summary["with_class"] = {str(c): sum(c in f for f in flags if f) for c in sorted({c for f in flags if f for c in f})}
    return images, digest.hexdigest(), summary


@pytest.fixture(scope="module")
def nifti(tmp_path_factory):
    shape, spacing = phantom_geometry(80, 10)
    return write_phantom_dataset(tmp_path_factory.mktemp("calib") / "nifti", 4, seed=5, shape=shape, spacing=spacing)


LIVER = "phantom:cases=5,size=96,slices=12,seed=3"
CHEST = "chest-phantom:cases=3,size=64,slices=16,seed=2"


@pytest.mark.parametrize("source, count, label_values, exclude", [
    (LIVER, 8, None, frozenset()), (LIVER, 1000, None, frozenset()),
    (LIVER, 10, {"liver": [1]}, frozenset({"case_001", "case_003"})),
    (CHEST, 9, CHEST_LABELS, frozenset()), (CHEST, 12, None, frozenset({"case_000"})),
    ("nifti", 11, {"liver": [1], "spine": [2], "kidney": [3]}, frozenset()), ("nifti", 7, None, frozenset({"case_002"})),
    ("nifti-file", 6, None, frozenset()),  # one file: one reader of the whole source
])
def test_the_same_calibration_as_with_every_case_in_memory(nifti, source, count, label_values, exclude):
    source = {"nifti": str(nifti), "nifti-file": str(nifti / "imagesTr" / "case_001.nii.gz")}.get(source, source)
    images, data_hash, summary = _all_at_once(source, SPEC, count, label_values, exclude)
    found = load_calibration(source, SPEC, count, label_values, exclude_cases=exclude)
    assert found.data_hash == data_hash and found.summary == summary
    assert found.images.dtype == images.dtype
    np.testing.assert_array_equal(found.images, images)


def test_every_case_held_out_is_refused_as_before():
    with pytest.raises(DataError, match="holds no slices outside the held-out cases"):
        load_calibration("phantom:cases=2,size=64,slices=4,seed=3", SPEC, 8, exclude_cases={"case_000", "case_001"})


def test_peak_does_not_grow_with_the_number_of_cases():
    from tests.export.test_verify_set_stream import case_growth

    # held at once, each further case adds its HU and label map
    growth = case_growth(lambda source: load_calibration(source, SPEC, 8))
    assert growth < 0.5, f"5 cases peaked {growth:.2f} case volumes above one"
