"""Corrected pre-annotations read back: a 3D Slicer segmentation (``.seg.nrrd``) is read by its
segments' names, not by the label values Slicer happened to give them, as ``--label-file`` and
from a dataset's labels folder. The truth is the chest phantom's own label map."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.data.chest_phantom import synth_chest_phantom
from edgeseg.data.open import open_dataset
from edgeseg.data.slice_set import volume_classes
from edgeseg.errors import DataError

nib = pytest.importorskip("nibabel")
nrrd = pytest.importorskip("nrrd")

CLASSES = {"ggo": [1], "consolidation": [2]}


@pytest.fixture(scope="module")
def chest():
    volume = synth_chest_phantom("case_000", seed=3, shape=(10, 48, 48), spacing=(2.5, 0.8, 0.8))
    assert {1, 2} <= set(np.unique(volume.label).tolist())
    return volume


def _write_ct(volume, path):
    """The phantom as a NIfTI in the (x, y, z) order of its LPS layout; returns the RAS affine."""
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    affine[:3, 3] = (19.0, 12.0, -30.0)
    nib.save(nib.Nifti1Image(volume.hu.transpose(2, 1, 0).astype(np.int16), affine), str(path))
    return affine


def _write_slicer_seg(path, label_zyx, affine, segments, layers=None):
    """A .seg.nrrd as Slicer saves one: LPS space, one Segment*_ field group per segment.
    ``segments``: (name, label value) in Slicer's segment order."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    header = {"space": "left-posterior-superior", "kinds": ["domain"] * 3, "encoding": "gzip",
              "space directions": lps.T, "space origin": np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]}
    for index, (name, value) in enumerate(segments):
        header.update({f"Segment{index}_ID": f"Segment_{index + 1}", f"Segment{index}_Name": name,
                       f"Segment{index}_LabelValue": str(value),
                       f"Segment{index}_Layer": str(index if layers else 0)})
    nrrd.write(str(path), np.ascontiguousarray(label_zyx.transpose(2, 1, 0)), header, index_order="F")


def _swapped(label):
    """consolidation as 1 and ggo as 2: what Slicer writes after the annotator deleted the ggo
    segment and drew it again (a new segment gets the next free value)."""
    out = np.zeros_like(label)
    out[label == 2], out[label == 1] = 1, 2
    return out


def test_label_file_segments_are_matched_to_classes_by_name(chest, tmp_path):
    affine = _write_ct(chest, tmp_path / "ct.nii.gz")
    _write_slicer_seg(tmp_path / "fixed.seg.nrrd", _swapped(chest.label), affine,
                      [("Consolidation", 1), ("GGO", 2)])
    volume, = open_dataset(tmp_path / "ct.nii.gz", label_file=tmp_path / "fixed.seg.nrrd")
    assert volume.label_names == {1: "Consolidation", 2: "GGO"}
    np.testing.assert_array_equal(volume_classes(volume, CLASSES), chest.label)


def test_a_labels_folder_takes_slicer_segmentations_for_training(chest, tmp_path):
    """``labelsTr/CASE.seg.nrrd`` beside ``imagesTr/CASE.nii.gz``: the corrected case trains with
    its classes by name; a case with a NIfTI and a .seg.nrrd label is refused as ambiguous."""
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    affine = _write_ct(chest, tmp_path / "imagesTr" / "case_000.nii.gz")
    _write_slicer_seg(tmp_path / "labelsTr" / "case_000.seg.nrrd", _swapped(chest.label), affine,
                      [("consolidation", 1), ("ggo", 2)])
    volume, = open_dataset(tmp_path)
    assert volume.case_id == "case_000"
    np.testing.assert_array_equal(volume_classes(volume, CLASSES), chest.label)
    nib.save(nib.Nifti1Image(chest.label.transpose(2, 1, 0), affine), str(tmp_path / "labelsTr" / "case_000.nii.gz"))
    with pytest.raises(DataError, match="case case_000 has two label files"):
        open_dataset(tmp_path)


def test_segments_named_as_no_class_fall_back_to_their_values(chest, tmp_path):
    """Slicer's default names (Segment_1 ...) say nothing about the classes: values decide."""
    affine = _write_ct(chest, tmp_path / "ct.nii.gz")
    _write_slicer_seg(tmp_path / "fixed.seg.nrrd", chest.label, affine, [("Segment_1", 1), ("Segment_2", 2)])
    volume, = open_dataset(tmp_path / "ct.nii.gz", label_file=tmp_path / "fixed.seg.nrrd")
    np.testing.assert_array_equal(volume_classes(volume, CLASSES), chest.label)


def test_a_segment_of_another_name_beside_named_classes_is_refused(chest, tmp_path):
    affine = _write_ct(chest, tmp_path / "ct.nii.gz")
    _write_slicer_seg(tmp_path / "fixed.seg.nrrd", _swapped(chest.label), affine, [("consolidation", 1), ("oops", 2)])
    volume, = open_dataset(tmp_path / "ct.nii.gz", label_file=tmp_path / "fixed.seg.nrrd")
    with pytest.raises(DataError, match="segment 'oops' \\(label value 2\\) is none of the classes ggo, consolidation"):
        volume_classes(volume, CLASSES)


def test_segments_in_two_layers_are_refused_by_name(chest, tmp_path):
    """Slicer keeps overlapping segments in layers (a 4-D file, one layer per component): one
    label map cannot hold them, and the message says so instead of counting axes."""
    affine = _write_ct(chest, tmp_path / "ct.nii.gz")
    stack = np.stack([(chest.label == 1), (chest.label == 2)]).astype(np.uint8)  # (layer, z, y, x)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    header = {"space": "left-posterior-superior", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": np.vstack([np.full(3, np.nan), lps.T]),
              "space origin": np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]}
    for index, name in enumerate(["ggo", "consolidation"]):
        header.update({f"Segment{index}_ID": name, f"Segment{index}_Name": name, f"Segment{index}_LabelValue": "1",
                       f"Segment{index}_Layer": str(index)})
    nrrd.write(str(tmp_path / "layers.seg.nrrd"), np.ascontiguousarray(stack.transpose(0, 3, 2, 1)), header,
               index_order="F")
    with pytest.raises(DataError, match="keeps its segments in 2 layers"):
        open_dataset(tmp_path / "ct.nii.gz", label_file=tmp_path / "layers.seg.nrrd")


def test_data_info_names_each_segment_beside_its_value(chest, tmp_path):
    """An annotator checking a corrected file sees which value Slicer gave which segment."""
    import subprocess
    import sys

    affine = _write_ct(chest, tmp_path / "ct.nii.gz")
    _write_slicer_seg(tmp_path / "fixed.seg.nrrd", _swapped(chest.label), affine, [("consolidation", 1), ("GGO", 2)])
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", "ct.nii.gz", "--label-file",
                           "fixed.seg.nrrd", "--quiet"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected = f"1=consolidation:{int((chest.label == 2).sum())} 2=GGO:{int((chest.label == 1).sum())}"
    assert expected in done.stdout


def test_a_dicom_tree_takes_slicer_segmentations_by_name_whole_and_one_case_at_a_time(tmp_path):
    """Series folders with ``labelsTr/CASE.seg.nrrd`` beside them, read whole (training) and one
    case at a time (evaluate): the swapped values still give each class its own voxels."""
    import subprocess
    import sys

    from edgeseg.data.case_stream import open_case_readers

    tree = tmp_path / "tree"
    subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "synth", "--out", str(tree), "--kind", "chest",
                    "--format", "dicom", "--cases", "2", "--size", "48", "--slices", "8", "--quiet"], check=True)
    values = [v for vals in CLASSES.values() for v in vals]
    # the truth: the classes of the phantom's own NIfTI label maps, read into the series' layout
    truth = {v.case_id: volume_classes(v, CLASSES) for v in open_dataset(tree, label_values=values)}
    for path in sorted((tree / "labelsTr").iterdir()):
        case_id = path.name[: -len(".nii.gz")]
        image = nib.load(str(path))
        data = np.asarray(image.dataobj).astype(np.uint8)
        _write_slicer_seg(path.with_name(f"{case_id}.seg.nrrd"), _swapped(data.transpose(2, 1, 0)), image.affine,
                          [("Consolidation", 1), ("GGO", 2)])
        path.unlink()
    whole = open_dataset(tree, label_values=values)
    streamed = [vol for reader in open_case_readers(tree, label_values=values) for vol in reader.read()]
    for volumes in (whole, streamed):
        assert sorted(v.case_id for v in volumes) == sorted(truth)
        for volume in volumes:
            expected = truth[volume.case_id]
            assert {1, 2} <= set(np.unique(expected).tolist())
            np.testing.assert_array_equal(volume_classes(volume, CLASSES), expected)
