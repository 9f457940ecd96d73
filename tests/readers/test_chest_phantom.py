"""Chest phantom: lungs with ground-glass and consolidation lesions, reproducible and readable."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from edgeseg.data import open_dataset, read_nifti_dataset, write_phantom_dataset
from edgeseg.data import CHEST_LABELS, synth_chest_phantom
from edgeseg.data.chest_phantom import CONSOLIDATION_HU, GGO_HU
from tests.guarded_cli import GuardedCliRunner

GGO, CONSOLIDATION = CHEST_LABELS["ggo"], CHEST_LABELS["consolidation"]
CASES = [f"case_{k:03d}" for k in range(6)]


@pytest.fixture(scope="module")
def volumes():
    return [synth_chest_phantom(case_id, seed=0) for case_id in CASES]


def test_same_seed_same_volume_other_seed_differs():
    a, b = synth_chest_phantom("case_002", seed=5), synth_chest_phantom("case_002", seed=5)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.label, b.label)
    other = synth_chest_phantom("case_002", seed=6)
    assert not np.array_equal(a.label, other.label)


def test_labels_are_background_ggo_consolidation(volumes):
    seen = set()
    for volume in volumes:
        assert volume.label.dtype == np.uint8 and volume.hu.dtype == np.float32
        seen |= set(np.unique(volume.label).tolist())
    assert seen == {0, GGO, CONSOLIDATION}


def _interior_hu(volume, value):
    # The in-plane blur mixes lesion edges with lung, so judge density two pixels inside.
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True
    core = ndimage.binary_erosion(volume.label == value, structure=structure, iterations=2)
    return volume.hu[core]


def test_lesion_densities_are_those_of_ggo_and_consolidation(volumes):
    ggo = np.concatenate([_interior_hu(v, GGO) for v in volumes])
    consolidation = np.concatenate([_interior_hu(v, CONSOLIDATION) for v in volumes])
    assert ggo.size > 100 and consolidation.size > 100
    # Nominal ranges, widened by the phantom's noise (sigma <= 25 HU) and texture.
    assert GGO_HU[0] - 60 <= np.median(ggo) <= GGO_HU[1] + 60
    assert CONSOLIDATION_HU[0] - 60 <= np.median(consolidation) <= CONSOLIDATION_HU[1] + 60
    assert np.median(ggo) < np.median(consolidation) - 200


def test_lesions_lie_inside_air_filled_lungs(volumes):
    for volume in volumes:
        lesion = volume.label > 0
        if not lesion.any():
            continue
        # Around every lesion, within 3 pixels in-plane, there is lung at air-like HU.
        ring = ndimage.binary_dilation(lesion, structure=np.ones((1, 7, 7), bool)) & ~lesion
        assert np.median(volume.hu[ring]) < -500
        nz, ny, nx = volume.hu.shape
        cols = np.argwhere(lesion)[:, 2]
        # Lungs sit either side of the midline, never in the central mediastinum.
        assert not ((cols > nx * 0.47) & (cols < nx * 0.53)).all()


def test_counts_vary_and_many_slices_have_no_lesion(volumes):
    counts = []
    for volume in volumes:
        per_slice = (volume.label > 0).sum(axis=(1, 2))
        assert per_slice[0] == 0 and per_slice[-1] == 0
        assert (per_slice == 0).sum() >= 3
        counts.append(int(ndimage.label(volume.label > 0)[1]))
    assert len(set(counts)) > 1


def test_written_chest_dataset_reads_back(tmp_path):
    out = write_phantom_dataset(tmp_path / "chest", cases=2, seed=1, shape=(6, 48, 48), spacing=(2.5, 4.0, 4.0),
                                kind="chest")
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["labels"] == {"0": "background", "1": "ggo", "2": "consolidation"}
    assert manifest["edgeseg"]["kind"] == "chest"
    read = read_nifti_dataset(out)
    assert [v.case_id for v in read] == ["case_000", "case_001"]
    for volume in read:
        again = synth_chest_phantom(volume.case_id, seed=1, shape=(6, 48, 48), spacing=(2.5, 4.0, 4.0))
        np.testing.assert_array_equal(volume.label, again.label)
        np.testing.assert_array_equal(volume.hu, again.hu)


def test_chest_phantom_spec_opens_in_memory():
    volumes = open_dataset("chest-phantom:cases=2,seed=3,size=32,slices=5")
    assert [v.hu.shape for v in volumes] == [(5, 32, 32)] * 2
    np.testing.assert_array_equal(volumes[1].label, synth_chest_phantom("case_001", 3, (5, 32, 32), (2.5, 6.0, 6.0)).label)


def test_cli_synth_kind_chest(tmp_path):
    from edgeseg.cli.data import command

    out = tmp_path / "chest"
    result = GuardedCliRunner().invoke(command, ["synth", "--kind", "chest", "--out", str(out), "--cases", "2",
                                                 "--size", "32", "--slices", "6", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 chest phantom cases" in result.stdout and "ggo=1 consolidation=2" in result.stdout
    assert len(list((out / "labelsTr").glob("*.nii.gz"))) == 2
    bad = GuardedCliRunner().invoke(command, ["synth", "--kind", "knee", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and not (tmp_path / "x").exists()
