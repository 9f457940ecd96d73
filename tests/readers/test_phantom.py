"""Synthetic phantom: reproducible, anatomically placed, and written as a readable MSD dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeseg.data import PHANTOM_LABELS, read_nifti_dataset, synth_phantom, write_phantom_dataset
from edgeseg.errors import DataError

LIVER, SPINE, KIDNEY = PHANTOM_LABELS["liver"], PHANTOM_LABELS["spine"], PHANTOM_LABELS["kidney"]
SMALL = (12, 64, 64)


def test_same_seed_same_case_same_volume():
    a, b = synth_phantom("case_001", seed=3), synth_phantom("case_001", seed=3)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.label, b.label)


def test_other_seed_or_case_differs():
    base = synth_phantom("case_001", seed=3)
    for other in (synth_phantom("case_001", seed=4), synth_phantom("case_002", seed=3)):
        assert not np.array_equal(base.label, other.label)
        assert np.abs(base.hu - other.hu).mean() > 5


@pytest.mark.parametrize("case_id", ["case_000", "case_001", "case_002", "case_003"])
def test_anatomy_is_where_lps_display_puts_it(case_id):
    volume = synth_phantom(case_id, seed=0)
    nz, ny, nx = volume.hu.shape
    assert volume.hu.dtype == np.float32 and volume.label.dtype == np.uint8
    assert set(np.unique(volume.label)) == {0, LIVER, SPINE, KIDNEY}

    liver = np.argwhere(volume.label == LIVER)
    spine = np.argwhere(volume.label == SPINE)
    kidney = np.argwhere(volume.label == KIDNEY)
    assert liver[:, 2].mean() < nx / 2  # patient's right = image left
    assert liver[:, 1].mean() < spine[:, 1].mean()  # liver anterior of the spine
    assert abs(spine[:, 2].mean() - (nx - 1) / 2) < 3  # spine on the midline
    assert kidney[:, 1].mean() > (ny - 1) / 2  # kidneys posterior
    assert (kidney[:, 2] < nx / 2).any() and (kidney[:, 2] > nx / 2).any()  # one each side

    per_slice = (volume.label == LIVER).sum(axis=(1, 2))
    assert per_slice[0] == 0 and per_slice[-1] == 0  # absent at both ends
    assert per_slice.argmax() not in (0, nz - 1)

    assert 45 <= float(volume.hu[volume.label == LIVER].mean()) <= 125
    assert 300 <= float(volume.hu[volume.label == SPINE].mean()) <= 950
    corner = volume.hu[:, :6, :6]  # air: -1000 plus the case's noise
    assert abs(float(corner.mean()) + 1000) < 5
    assert 6 <= float(corner.std()) <= 27


@pytest.mark.parametrize("case_id", ["case_000", "case_001", "case_004"])
def test_intensity_alone_does_not_find_the_liver(case_id):
    volume = synth_phantom(case_id, seed=0)
    liver_hu = volume.hu[volume.label == LIVER]
    low, high = np.percentile(liver_hu, [25, 75])
    lookalike = (volume.hu >= low) & (volume.hu <= high) & (volume.label != LIVER)
    # Even with a bright liver, the spleen-like organ on the image right has the liver's HU.
    assert lookalike[:, :, volume.hu.shape[2] // 2:].sum() > 0.03 * liver_hu.size


def test_cases_differ_in_noise_and_liver_contrast():
    volumes = [synth_phantom(f"case_{k:03d}", seed=0, shape=SMALL) for k in range(6)]
    noise = [float(v.hu[:, :4, :4].std()) for v in volumes]
    contrast = [float(v.hu[v.label == LIVER].mean()) for v in volumes]
    assert max(noise) - min(noise) > 3
    assert max(contrast) - min(contrast) > 10


def test_bad_arguments():
    with pytest.raises(DataError, match="shape"):
        synth_phantom("a", 0, shape=(4, 8, 8))
    with pytest.raises(DataError, match="seed"):
        synth_phantom("a", -1)
    with pytest.raises(DataError, match="spacing"):
        synth_phantom("a", 0, spacing=(1.0, 0.0, 1.0))


def test_written_dataset_reads_back_as_generated(tmp_path):
    out = write_phantom_dataset(tmp_path / "phantom", cases=3, seed=7, shape=SMALL)

    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["modality"] == {"0": "CT"}
    assert manifest["labels"] == {"0": "background", "1": "liver", "2": "spine", "3": "kidney"}
    assert manifest["numTraining"] == 3
    assert manifest["training"][0] == {
        "image": "./imagesTr/case_000.nii.gz", "label": "./labelsTr/case_000.nii.gz"}

    volumes = read_nifti_dataset(out)
    assert [v.case_id for v in volumes] == ["case_000", "case_001", "case_002"]
    for volume in volumes:
        expected = synth_phantom(volume.case_id, 7, shape=SMALL)
        np.testing.assert_array_equal(volume.hu, expected.hu)
        np.testing.assert_array_equal(volume.label, expected.label)
        np.testing.assert_allclose(volume.affine, expected.affine)
        assert volume.spacing == expected.spacing


def test_rewriting_replaces_an_earlier_phantom_but_not_other_folders(tmp_path):
    out = tmp_path / "phantom"
    write_phantom_dataset(out, cases=3, seed=0, shape=SMALL)
    write_phantom_dataset(out, cases=2, seed=0, shape=SMALL)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["case_000.nii.gz", "case_001.nii.gz"]

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty and not a phantom dataset"):
        write_phantom_dataset(tmp_path / "mine", cases=2, seed=0, shape=SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_phantom_folder_holding_anything_else_is_not_replaced(tmp_path):
    """A run pointed at a phantom folder puts checkpoints beside it; synth replaces the folder
    whole, so it refuses, naming what it did not write, and the folder is left as it was."""
    from tests.guarded_cli import GuardedCliRunner

    from edgeseg.cli.main import cli

    out = tmp_path / "phantom"
    write_phantom_dataset(out, cases=2, seed=0, shape=SMALL, image_format="dicom")
    write_phantom_dataset(out, cases=1, seed=0, shape=SMALL)  # synth's own folders alone: replaced
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    (out / "best.pt").write_bytes(b"weights")
    (out / "slice-store").mkdir()
    (out / "labelsTr" / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    result = GuardedCliRunner().invoke(cli, ["data", "synth", "--out", str(out), "--cases", "1", "--size", "32",
                                             "--slices", "6", "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("edgeseg: error: ") and len(result.output.strip().splitlines()) == 1
    assert "holds best.pt, which `edgeseg data synth` does not write" in result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    (out / "best.pt").unlink()
    (out / "slice-store").rmdir()
    with pytest.raises(DataError, match="holds labelsTr/notes.txt"):
        write_phantom_dataset(out, cases=1, seed=0, shape=SMALL)
    assert (out / "labelsTr" / "notes.txt").read_text() == "mine"
