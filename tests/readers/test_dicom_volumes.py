"""A CT series holding several volumes under one Series Instance UID (two orientations, two
stacks, two temporal positions, two acquisitions at the same positions) is split into them by one
documented rule (edgeseg.data.dicom_volumes) instead of being refused: ``edgeseg predict`` refuses
it in one line listing the volumes unless ``--volume K`` picks one, and volume K segments exactly
as a folder holding that volume's files alone does. Images at one position with nothing to tell
them apart stay refused, in one line naming the positions.

Before, each of these series was refused whole ("... lie at the same slice position ...; the folder
mixes acquisitions", "... a series must have one orientation"), and predict had no --volume."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.data.dicom import read_dicom_series_with_refs
from edgeseg.errors import DataError
from tests.dicom_volume_series import AMBIGUOUS, KINDS, copy_volume, make_series
from tests.guarded_cli import GuardedCliRunner

pydicom = pytest.importorskip("pydicom")


def _predict(bundle, source, out, *options) -> tuple[int, str]:
    from edgeseg.cli.main import cli

    result = GuardedCliRunner().invoke(cli, ["predict", str(bundle), str(source), "--out", str(out),
                                             "--backend", "onnxruntime:fp32", "--quiet", *options])
    return result.exit_code, result.output


@pytest.mark.parametrize("kind", KINDS)
def test_each_volume_is_read_with_exactly_its_files(tmp_path, kind):
    from edgeseg.data.dicom import series_volumes

    volumes = make_series(tmp_path / "series", KINDS[kind])
    found = series_volumes(tmp_path / "series")
    assert [sorted(path for path, _ in v.members) for v in found] == [sorted(files) for files in volumes]
    for number, files in enumerate(volumes, start=1):
        volume, refs = read_dicom_series_with_refs(tmp_path / "series", volume=number)
        alone, alone_refs = read_dicom_series_with_refs(copy_volume(files, tmp_path / f"alone{number}"))
        assert sorted(p.name for p in refs.files) == sorted(p.name for p in files)
        assert refs.sop_instance_uids == alone_refs.sop_instance_uids
        np.testing.assert_array_equal(volume.hu, alone.hu)
        np.testing.assert_array_equal(volume.affine, alone.affine)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_of_volume_k_equals_predict_of_its_images_alone(exported_bundle, tmp_path, kind):
    volumes = make_series(tmp_path / "series", KINDS[kind])
    code, output = _predict(exported_bundle, tmp_path / "series", tmp_path / "all.npy")
    errors = [line for line in output.splitlines() if line.startswith("edgeseg: error:")]
    assert code != 0 and len(errors) == 1 and "Traceback" not in output, output
    assert "holds 2 volumes: 1 (" in errors[0] and "; 2 (" in errors[0] and "--volume K" in errors[0], errors[0]
    assert not (tmp_path / "all.npy").exists()
    masks = []
    for number, files in enumerate(volumes, start=1):
        code, output = _predict(exported_bundle, tmp_path / "series", tmp_path / f"v{number}.npy", "--volume", str(number))
        assert code == 0, output
        alone = copy_volume(files, tmp_path / f"alone{number}")
        code, output = _predict(exported_bundle, alone, tmp_path / f"alone{number}.npy")
        assert code == 0, output
        picked, expected = np.load(tmp_path / f"v{number}.npy"), np.load(tmp_path / f"alone{number}.npy")
        assert picked.shape == expected.shape and int((picked != expected).sum()) == 0
        masks.append(picked)
    if kind != "orientation":  # the two volumes' pixels differ, so --volume chose which was segmented
        assert (masks[0] != masks[1]).any()


def test_a_volume_past_the_last_is_refused_in_one_line(exported_bundle, tmp_path):
    make_series(tmp_path / "series", KINDS["temporal"])
    code, output = _predict(exported_bundle, tmp_path / "series", tmp_path / "v.npy", "--volume", "3")
    assert code != 0 and "edgeseg: error: --volume 3: series " in output and "holds 2 volumes" in output, output
    assert "TemporalPositionIdentifier 1" in output and "TemporalPositionIdentifier 2" in output, output
    assert len(output.strip().splitlines()) == 1 and not (tmp_path / "v.npy").exists()


def test_images_at_one_position_with_nothing_to_tell_them_apart_stay_refused(tmp_path):
    make_series(tmp_path / "series", AMBIGUOUS)
    positions = sorted(float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in (tmp_path / "series").iterdir())[::2]
    with pytest.raises(DataError) as info:
        read_dicom_series_with_refs(tmp_path / "series")
    message = str(info.value)
    assert "\n" not in message and "lie at the same slice position" in message and "nothing tells them apart" in message
    assert all(f"{z:.3f}" in message for z in positions), message  # each repeated position named


def test_enhanced_ct_over_two_temporal_positions_is_split_as_its_slices_are(exported_bundle, tmp_path):
    """Before, the file was refused: "holds 2 values of TemporalPositionIndex ... several temporal positions"."""
    from tests.dicom_volume_series import make_enhanced_temporal

    path, volumes = make_enhanced_temporal(tmp_path)
    for number, files in enumerate(volumes, start=1):
        volume, refs = read_dicom_series_with_refs(path, volume=number)
        alone = read_dicom_series_with_refs(copy_volume(files, tmp_path / f"alone{number}"))[0]
        np.testing.assert_array_equal(volume.hu, alone.hu)
        assert sorted(refs.frame_numbers) == list(range(number, 7, 2))  # frames 1, 3, 5 / 2, 4, 6
        code, output = _predict(exported_bundle, path, tmp_path / f"v{number}.npy", "--volume", str(number))
        assert code == 0, output
        code, output = _predict(exported_bundle, tmp_path / f"alone{number}", tmp_path / f"alone{number}.npy")
        assert code == 0, output
        assert int((np.load(tmp_path / f"v{number}.npy") != np.load(tmp_path / f"alone{number}.npy")).sum()) == 0


def test_data_info_lists_the_volumes_of_a_series(tmp_path):
    from edgeseg.cli.main import cli

    make_series(tmp_path / "series", KINDS["stack"])
    result = GuardedCliRunner().invoke(cli, ["data", "info", str(tmp_path / "series"), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.startswith("series volume")]
    assert [row[:3] for row in rows] == [["series", "volume", "1"], ["series", "volume", "2"]]
    assert all(row[3] == "3x512x512" for row in rows), rows
    assert "2 volumes in one series (predict --volume K): 1 (StackID 1, 3 images); 2 (StackID 2, 3 images)" in result.output


def _acquisition_with_temporal_per_slice(ds, volume, slice_index):
    ds.AcquisitionNumber, ds.ContentTime = volume + 1, "120000"
    ds.TemporalPositionIdentifier = slice_index + 1  # counts slices: the same at each shared position


def test_a_temporal_position_per_slice_does_not_hide_the_acquisitions(tmp_path):
    from edgeseg.data.dicom import series_volumes

    volumes = make_series(tmp_path / "series", _acquisition_with_temporal_per_slice)
    found = series_volumes(tmp_path / "series")
    assert [sorted(path for path, _ in v.members) for v in found] == [sorted(files) for files in volumes]
    assert [v.label for v in found] == ["AcquisitionNumber 1", "AcquisitionNumber 2"]


def _temporal_unique_per_slice(ds, volume, slice_index):
    AMBIGUOUS(ds, volume, slice_index)
    ds.TemporalPositionIdentifier = 3 * volume + slice_index + 1  # tells each image apart, groups none


def test_a_temporal_position_unique_to_each_slice_alone_is_refused_as_ambiguous(tmp_path):
    make_series(tmp_path / "series", _temporal_unique_per_slice)
    with pytest.raises(DataError) as info:
        read_dicom_series_with_refs(tmp_path / "series")
    assert "\n" not in str(info.value) and "nothing tells them apart" in str(info.value)
