"""What stays one volume under the split of edgeseg.data.dicom_volumes, and what the split does not
depend on. StackID and temporal positions tell volumes apart only where images share a position;
per-slice AcquisitionNumber or ContentTime, one StackID, a StackID or temporal position on some or
each slice, cosines jittering within the tolerance leave one volume, read as the plain series is.
Localizers (scout views) are left out of the volumes; a series of localizers alone is refused in
one line. The split and the volumes' numbering do not depend on the files' names."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edgeseg.data.dicom import read_dicom_series_with_refs, series_volumes
from edgeseg.errors import DataError
from tests.dicom_volume_series import make_one_series, make_series
from tests.guarded_cli import GuardedCliRunner

pydicom = pytest.importorskip("pydicom")


def _per_slice_acquisition(ds, j):
    ds.AcquisitionNumber, ds.ContentTime = j + 1, f"1200{j:02d}.{j}"


def _one_stack(ds, j):
    ds.StackID, ds.InStackPositionNumber = "1", j + 1


def _stack_on_some(ds, j):
    if j:
        ds.StackID = "1"


def _temporal_per_slice(ds, j):
    ds.TemporalPositionIdentifier = j + 1


def _rotated(ds, angle: float) -> None:
    ds.ImageOrientationPatient = [float(np.cos(angle)), float(np.sin(angle)), 0.0,
                                  float(-np.sin(angle)), float(np.cos(angle)), 0.0]


def _jitter(ds, j):
    _rotated(ds, (j - 1) * 4.5e-5)  # cosines 9e-5 apart at most: within the tolerance of 1e-4


@pytest.mark.parametrize("change", [_per_slice_acquisition, _one_stack, _stack_on_some, _temporal_per_slice,
                                    _jitter])
def test_stays_one_volume(tmp_path, change):
    """Before, _stack_on_some made two volumes (StackID (none), 1 image; StackID 1, 2 images) and
    _temporal_per_slice three of one image each; the reader before the split read both as one."""
    files = make_one_series(tmp_path / "series", change)
    (volume,) = series_volumes(tmp_path / "series")
    assert volume.label == "" and sorted(path for path, _ in volume.members) == sorted(files)
    read, refs = read_dicom_series_with_refs(tmp_path / "series")
    plain = read_dicom_series_with_refs(make_one_series(tmp_path / "plain")[0].parent)[0]
    assert sorted(refs.files) == sorted(files)
    np.testing.assert_array_equal(read.hu, plain.hu)


def test_a_scout_is_left_out_of_the_volumes(tmp_path, caplog):
    """Before, the coronal scout was volume 1 of two, a (512, 1, 512) volume."""
    files = make_one_series(tmp_path / "series", scouts=1)
    with caplog.at_level(logging.WARNING, logger="edgeseg.data.dicom_volumes"):
        (volume,) = series_volumes(tmp_path / "series")
    assert volume.label == "" and sorted(path for path, _ in volume.members) == sorted(files)
    warned = [r.getMessage() for r in caplog.records if "localizer" in r.getMessage()]
    assert len(warned) == 1 and "im03.dcm" in warned[0], warned
    assert "1 localizer image(s) (ImageType LOCALIZER) left out" in warned[0]
    read = read_dicom_series_with_refs(tmp_path / "series")[0]
    plain = read_dicom_series_with_refs(make_one_series(tmp_path / "plain")[0].parent)[0]
    np.testing.assert_array_equal(read.hu, plain.hu)


def test_a_series_of_localizers_alone_is_refused_in_one_line(exported_bundle, tmp_path):
    from tests.readers.test_dicom_volumes import _predict

    for path in make_one_series(tmp_path / "series", scouts=2):
        path.unlink()
    code, output = _predict(exported_bundle, tmp_path / "series", tmp_path / "out.npy")
    assert code != 0 and "Traceback" not in output and len(output.strip().splitlines()) == 1, output
    assert "holds localizers alone (2 image(s) of ImageType LOCALIZER: im03.dcm, im04.dcm)" in output, output
    assert not (tmp_path / "out.npy").exists()


def _drift(ds, j):
    _rotated(ds, j * 6e-5)  # each slice within 1e-4 of the next, the first and last 1.2e-4 apart


@pytest.mark.parametrize("name", [lambda j: f"im{j:02d}.dcm", lambda j: f"im{(j + 1) % 3:02d}.dcm"])
def test_orientation_drifting_past_the_tolerance_is_refused_whatever_the_names(tmp_path, name):
    """Before, the images were grouped by the first file's cosines in name order: im00, im01, im02
    made two volumes (slices 0, 1 and slice 2), the other names two others (slice 0 and slices 1, 2),
    so the same images gave different volumes K."""
    make_one_series(tmp_path / "series", _drift, name=name)
    with pytest.raises(DataError) as info:
        series_volumes(tmp_path / "series")
    message = str(info.value)
    assert "\n" not in message and "ImageOrientationPatient drifts from image to image" in message, message
    assert f"{name(0)} [1.0, 0.0, 0.0, 0.0, 1.0, 0.0] to {name(2)}" in message, message


@pytest.mark.parametrize("swap", [False, True])
def test_volumes_are_numbered_by_their_values_as_written_whatever_the_names(tmp_path, swap):
    """ContentTime 120000 and 120000.000 are one number written two ways: volume 1 is the images
    of 120000, whichever file names come first. Before, the tie kept the order the files came in."""
    def times(ds, volume, slice_index):
        ds.AcquisitionNumber, ds.ContentTime = 1, "120000.000" if volume == 0 else "120000"

    volumes = make_series(tmp_path / "series", times)
    if swap:  # the names of the two volumes' images traded
        for a, b in zip(*volumes):
            a.rename(a.with_name("swap"))
            b.rename(a)
            a.with_name("swap").rename(b)
        volumes = volumes[::-1]
    found = series_volumes(tmp_path / "series")
    assert [v.label for v in found] == ["ContentTime 120000", "ContentTime 120000.000"]
    assert [str(ds.ContentTime) for _, ds in found[0].members] == ["120000"] * 3
    assert sorted(path for path, _ in found[0].members) == sorted(volumes[1])


def test_data_info_label_file_on_several_volumes_says_what_to_do(tmp_path):
    """Before, it said "pick one with --volume K", an option data info does not have."""
    from edgeseg.cli.main import cli

    make_series(tmp_path / "series", lambda ds, volume, slice_index: setattr(ds, "StackID", str(volume + 1)))
    (tmp_path / "labels.nii.gz").write_bytes(b"")
    result = GuardedCliRunner().invoke(cli, ["data", "info", str(tmp_path / "series"), "--label-file",
                                             str(tmp_path / "labels.nii.gz"), "--quiet"])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    expected = ("holds 2 volumes: 1 (StackID 1, 3 images); 2 (StackID 2, 3 images); this reads one volume: give a "
                "folder holding one volume's images alone (edgeseg predict --volume K segments one; edgeseg data info "
                "SOURCE lists them)")
    assert expected in result.output, result.output
    assert "pick one with --volume K" not in result.output


@pytest.mark.parametrize("volumes", [1, 2])
def test_data_info_warns_of_the_localizers_once(tmp_path, volumes):
    """Before, data info read the series twice (to count its volumes, then to describe them) and
    printed the localizer warning twice (--quiet, which gathers warnings, hid it), where the docs
    say one warning line."""
    import subprocess
    import sys

    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path / "series"
    if volumes == 1:
        make_one_series(folder, scouts=1)
    else:
        files = make_series(folder, lambda ds, volume, slice_index: setattr(ds, "StackID", str(volume + 1)))
        scout = pydicom.dcmread(files[0][0])
        scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        scout.save_as(folder / "scout.dcm")
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "localizer image(s)" in line]
    assert len(warned) == 1, proc.stderr
    assert f"{volumes} volumes in one series" in proc.stdout if volumes > 1 else "1 case" in proc.stdout, proc.stdout
