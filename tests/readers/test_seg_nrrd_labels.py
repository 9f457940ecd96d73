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


def _write_layers(path, layers_zyx, affine, segments, start_xyz=(0, 0, 0)):
    """A layered .seg.nrrd as Slicer saves overlapping segments: a leading list axis, one 3-D
    layer per group; ``segments``: (name, label value, layer). ``start_xyz``: the first voxel of
    the saved box in the image (Slicer's crop to the content)."""
    lps = np.diag([-1.0, -1.0, 1.0])
    header = {"space": "left-posterior-superior", "kinds": ["list", "domain", "domain", "domain"], "encoding": "gzip",
              "space directions": np.vstack([np.full(3, np.nan), (lps @ affine[:3, :3]).T]),
              "space origin": lps @ (affine @ np.array([*start_xyz, 1.0]))[:3],
              "Segmentation_ReferenceImageExtentOffset": " ".join(map(str, start_xyz))}
    for index, (name, value, layer) in enumerate(segments):
        header.update({f"Segment{index}_ID": f"Segment_{index + 1}", f"Segment{index}_Name": name,
                       f"Segment{index}_LabelValue": str(value), f"Segment{index}_Layer": str(layer)})
    nrrd.write(str(path), np.ascontiguousarray(np.stack(layers_zyx).astype(np.uint8).transpose(0, 3, 2, 1)), header,
               index_order="F")


def test_segments_in_two_layers_are_merged_into_one_label_map(chest, tmp_path):
    """Slicer may keep segments in layers (a 4-D file) even where they do not overlap, each
    layer numbering its segments from 1; a third layer holds part of ggo again under another
    spelling, overlapping the first: one class, so no conflict. The merged map gives each class
    its own voxels, also when the layered file is cropped to its content."""
    affine = _write_ct(chest, tmp_path / "ct.nii.gz")
    ggo, consolidation = chest.label == 1, chest.label == 2
    again = ggo.copy()
    again[: chest.label.shape[0] // 2] = False
    layers = [ggo, consolidation, again]
    segments = [("ggo", 1, 0), ("Consolidation", 1, 1), ("GGO", 1, 2)]
    _write_layers(tmp_path / "layers.seg.nrrd", layers, affine, segments)
    volume, = open_dataset(tmp_path / "ct.nii.gz", label_file=tmp_path / "layers.seg.nrrd")
    np.testing.assert_array_equal(volume_classes(volume, CLASSES), chest.label)
    assert sorted(volume.label_names.values()) == ["Consolidation", "ggo"]

    z, y, x = (np.flatnonzero(np.any(chest.label, axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    box = np.s_[z[0]:z[-1] + 1, y[0]:y[-1] + 1, x[0]:x[-1] + 1]
    _write_layers(tmp_path / "cropped.seg.nrrd", [layer[box] for layer in layers], affine, segments,
                  (x[0], y[0], z[0]))
    volume, = open_dataset(tmp_path / "ct.nii.gz", label_file=tmp_path / "cropped.seg.nrrd")
    np.testing.assert_array_equal(volume_classes(volume, CLASSES), chest.label)


def test_overlapping_segments_of_two_classes_are_refused_naming_both_and_a_voxel(chest, tmp_path,
                                                                                 assert_one_line_error):
    import subprocess
    import sys

    affine = _write_ct(chest, tmp_path / "ct.nii.gz")
    consolidation = chest.label == 2
    ggo = (chest.label == 1) | np.roll(consolidation, 1, axis=2)  # ggo drawn over consolidation's edge
    _write_layers(tmp_path / "overlap.seg.nrrd", [ggo, consolidation], affine, [("ggo", 1, 0), ("consolidation", 1, 1)])
    # the oracle: the first voxel of both, in the file's (i, j, k) order
    i, j, k = np.argwhere((ggo & consolidation).transpose(2, 1, 0))[0]
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", "ct.nii.gz", "--label-file",
                           "overlap.seg.nrrd", "--quiet"], capture_output=True, text=True, cwd=tmp_path)
    assert_one_line_error(done, f"overlap.seg.nrrd: segments 'ggo' and 'consolidation' overlap, e.g. at voxel "
                                f"({i}, {j}, {k}) of the file")


def test_a_one_layer_segmentation_without_layer_fields_keeps_its_segments(chest, tmp_path):
    """A 3-D file whose segments have no SegmentN_Layer (written by a script, or an older
    release): all of them are in its one layer, not one layer each."""
    affine = _write_ct(chest, tmp_path / "ct.nii.gz")
    _write_slicer_seg(tmp_path / "fixed.seg.nrrd", _swapped(chest.label), affine, [("consolidation", 1), ("ggo", 2)])
    data, header = nrrd.read(str(tmp_path / "fixed.seg.nrrd"))
    for key in [key for key in header if key.endswith("_Layer")]:
        del header[key]
    nrrd.write(str(tmp_path / "fixed.seg.nrrd"), data, header)
    volume, = open_dataset(tmp_path / "ct.nii.gz", label_file=tmp_path / "fixed.seg.nrrd")
    np.testing.assert_array_equal(volume_classes(volume, CLASSES), chest.label)


def _content_box(label, margin):
    """The (z, y, x) slices of the label's bounding box grown by ``margin`` voxels, kept inside."""
    spans = [np.flatnonzero(np.any(label, axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    return tuple(slice(max(s[0] - margin, 0), min(s[-1] + 1 + margin, n)) for s, n in zip(spans, label.shape))


def _write_cropped(path, label_zyx, affine, box, nudge_xyz=(0.0, 0.0, 0.0), flip_x=False):
    """A .seg.nrrd as Slicer saves it cropped to its content: the sizes of ``box`` (z, y, x
    slices), an origin at the box's first voxel (``nudge_xyz`` voxels off it), the offset in
    Segmentation_ReferenceImageExtentOffset and each segment's extent within the box. ``flip_x``
    stores the x axis the other way round (origin at the box's last x voxel)."""
    start = np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64)
    data = np.ascontiguousarray(label_zyx[box].transpose(2, 1, 0))
    steps = affine[:3, :3].copy()
    if flip_x:
        start[0] += data.shape[0] - 1
        data, steps[:, 0] = np.ascontiguousarray(data[::-1]), -steps[:, 0]
    lps = np.diag([-1.0, -1.0, 1.0])
    header = {"space": "left-posterior-superior", "kinds": ["domain"] * 3, "encoding": "gzip",
              "space directions": (lps @ steps).T,
              "space origin": lps @ (affine @ np.array([*(start + nudge_xyz), 1.0]))[:3],
              "Segmentation_ReferenceImageExtentOffset": " ".join(str(int(v)) for v in start)}
    for index, value in enumerate((1, 2)):
        where = np.argwhere(data == value)
        extent = " ".join(f"{a} {b}" for a, b in zip(where.min(axis=0), where.max(axis=0)))
        header.update({f"Segment{index}_ID": f"Segment_{value}", f"Segment{index}_Name": ["ggo", "consolidation"][index],
                       f"Segment{index}_LabelValue": str(value), f"Segment{index}_Layer": "0",
                       f"Segment{index}_Extent": extent})
    nrrd.write(str(path), data, header, index_order="F")


@pytest.mark.parametrize("margin, flip_x, nudge", [(0, False, 0.0), (2, False, 0.0), (3, True, 0.0),
                                                   (100, False, 0.0), (1, False, 4e-4)],
                         ids=["content", "margin-2", "margin-3-x-reversed", "full-extent", "within-1e-3-voxel"])
def test_a_segmentation_cropped_to_its_content_lands_on_the_image_voxels(chest, tmp_path, margin, flip_x, nudge):
    """Slicer's crop to minimum extent: the saved box goes back where it was cut from, with no
    margin at all, with a margin, stored with an axis reversed, and as the whole image; an
    origin off by less than a thousandth of a voxel is float rounding and is taken."""
    affine = _write_ct(chest, tmp_path / "ct.nii.gz")
    box = _content_box(chest.label, margin)
    assert (box[2].start > 0) == (margin < 100)
    _write_cropped(tmp_path / "fixed.seg.nrrd", chest.label, affine, box, (nudge, -nudge, nudge), flip_x)
    volume, = open_dataset(tmp_path / "ct.nii.gz", label_file=tmp_path / "fixed.seg.nrrd")
    np.testing.assert_array_equal(volume_classes(volume, CLASSES), chest.label)


@pytest.mark.parametrize("nudge, steps, match", [
    ((0.5, 0.0, 0.0), 1.0, r"starts at voxel \(\d+\.5, \d+, \d+\) \(x, y, z\) of ct, not a whole number of voxels"),
    ((0.0, 0.0, 2e-3), 1.0, r"starts at voxel \(\d+, \d+, \d+\.002\) .*not a whole number of voxels \(tolerance 0.001 voxel\)"),
    ((-30.0, 0.0, 0.0), 1.0, r"covers voxels x -\d+\.\.\d+, .* which has x 0\.\.47, y 0\.\.47, z 0\.\.9: the box reaches "
                             r"outside the image"),
    ((0.0, 0.0, 6.0), 1.0, r"covers voxels .*z \d+\.\.1\d of ct.*reaches outside"),
    ((0.0, 0.0, 0.0), 1.01, r"has other axis directions or voxel sizes than ct"),
], ids=["half-voxel", "above-1e-3", "before-x", "past-z", "other-spacing"])
def test_a_cropped_segmentation_off_the_image_grid_is_refused(chest, tmp_path, nudge, steps, match):
    affine = _write_ct(chest, tmp_path / "ct.nii.gz")
    scaled = affine.copy()
    scaled[:3, :3] *= steps
    box = _content_box(chest.label, 1)
    _write_cropped(tmp_path / "off.seg.nrrd", chest.label, scaled, box, nudge)
    with pytest.raises(DataError, match=r"label .*off\.seg\.nrrd " + match):
        open_dataset(tmp_path / "ct.nii.gz", label_file=tmp_path / "off.seg.nrrd")


def test_a_segmentation_with_nothing_set_is_an_empty_label_map(chest, tmp_path):
    """Slicer saves a segmentation whose segments are all empty as one voxel, whose geometry
    means nothing: the annotator erased every false positive."""
    affine = _write_ct(chest, tmp_path / "ct.nii.gz")
    header = {"space": "left-posterior-superior", "kinds": ["domain"] * 3, "space directions": np.eye(3),
              "space origin": np.array([0.3, 0.3, 0.3]), "Segment0_ID": "Segment_1", "Segment0_Name": "ggo",
              "Segment0_LabelValue": "1", "Segment0_Layer": "0"}
    del affine
    nrrd.write(str(tmp_path / "empty.seg.nrrd"), np.zeros((1, 1, 1), dtype=np.uint8), header, index_order="F")
    volume, = open_dataset(tmp_path / "ct.nii.gz", label_file=tmp_path / "empty.seg.nrrd")
    assert volume.label.shape == chest.label.shape and not volume.label.any()


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
