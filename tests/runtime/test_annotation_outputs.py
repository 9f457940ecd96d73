"""Pre-annotations for 3D Slicer and ITK-SNAP: a ``.seg.nrrd`` on the input's own voxel grid with
named, coloured segments, the class tables (Slicer ``.ctbl``, ITK-SNAP label descriptions), and a
NIfTI label map whose header says label map. Geometry is read back with ITK (SimpleITK), the
reader both tools use; header fields and tables are parsed here from the text."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from edgeseg.runtime.readers import read_input
from edgeseg.runtime.writers import write_nifti, write_seg_nrrd

DATA = Path(__file__).resolve().parents[1] / "data"
CLASSES = {0: "background", 1: "ggo", 2: "consolidation"}
# The project's class colours (docs/runtime.md, Overlays): Okabe-Ito sky blue, orange, yellow.
OKABE_ITO = {1: (0x56, 0xB4, 0xE9), 2: (0xE6, 0x9F, 0x00), 3: (0xF0, 0xE4, 0x42)}


def _classes_of(hu: np.ndarray) -> np.ndarray:
    """Two classes from HU alone, so that the same rule on ITK's own read of the input is the
    oracle for where each label must lie (thresholds half-way between whole HU)."""
    return ((hu > -500.5).astype(np.uint8) + (hu > 100.5)).astype(np.uint8)


def _nrrd_fields(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(fields ``key: value``, key/value pairs ``key:=value``) of an NRRD header, parsed by hand."""
    head = path.read_bytes().split(b"\n\n", 1)[0].decode("ascii").splitlines()
    assert head[0].startswith("NRRD000")
    fields, pairs = {}, {}
    for line in head[1:]:
        if line.startswith("#"):
            continue
        if ":=" in line:
            key, value = line.split(":=", 1)
            pairs[key] = value
        else:
            key, value = line.split(": ", 1)
            fields[key] = value
    return fields, pairs


def _chest_nifti(tmp_path) -> Path:
    nib = pytest.importorskip("nibabel")
    from edgeseg.data.chest_phantom import synth_chest_phantom

    chest = synth_chest_phantom("case_000", seed=0, shape=(8, 48, 40), spacing=(2.5, 0.8, 0.7))
    # stored x reversed (RAS, as many NIfTI writers store it) and an origin off zero
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-20.0, 31.5, -101.25)
    path = tmp_path / "chest.nii.gz"
    nib.save(nib.Nifti1Image(chest.hu.transpose(2, 1, 0)[::-1].astype(np.int16), affine), str(path))
    return path


INPUTS = {"chest-nifti": _chest_nifti,
          "totalseg-nifti-ras": lambda tmp_path: DATA / "totalseg_example_ct" / "example_ct_sm.nii.gz",
          "dcmqi-dicom-series": lambda tmp_path: DATA / "dcmqi_ct_liver" / "ct-3slice"}


def _itk_read(sitk, path: Path):
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


@pytest.mark.parametrize("source", list(INPUTS))
@pytest.mark.parametrize("fmt", ["seg.nrrd", "nii.gz"])
def test_label_map_is_on_the_input_grid_as_itk_reads_both(tmp_path, source, fmt):
    """What Slicer and ITK-SNAP need to overlay a pre-annotation without resampling: the same
    size, origin, spacing and direction as the image, and each label on its voxel."""
    sitk = pytest.importorskip("SimpleITK")
    path = INPUTS[source](tmp_path)
    volume, _ = read_input(path)
    out = tmp_path / f"labels.{fmt}"
    if fmt == "seg.nrrd":
        write_seg_nrrd(_classes_of(volume.hu), volume, CLASSES, out)
    else:
        write_nifti(_classes_of(volume.hu), volume, out)
    image, labels = _itk_read(sitk, path), sitk.ReadImage(str(out))
    assert labels.GetSize() == image.GetSize()
    np.testing.assert_allclose(labels.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(labels.GetDirection(), image.GetDirection(), atol=1e-6)
    assert labels.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), _classes_of(sitk.GetArrayFromImage(image)))


def test_seg_nrrd_names_and_colours_each_class_as_slicer_reads_segments(tmp_path):
    """One layer, one segment per class with its name, the class's colour of every edgeseg figure,
    its class number as label value, and the whole grid as extent, empty class included (Slicer
    builds a layer from its first segment's extent: an empty one would lose the others)."""
    volume, _ = read_input(_chest_nifti(tmp_path))
    labels = np.zeros(volume.hu.shape, np.uint8)
    labels[2:5, 10:20, 8:30] = 2  # no ggo at all
    out = write_seg_nrrd(labels, volume, CLASSES, tmp_path / "pre.seg.nrrd")
    fields, pairs = _nrrd_fields(out)
    assert fields["dimension"] == "3" and fields["type"] in ("uint8", "unsigned char", "uchar")
    assert fields["space"] == "left-posterior-superior" and fields["encoding"] == "gzip"
    sizes = [int(n) for n in fields["sizes"].split()]
    extent = " ".join(f"0 {n - 1}" for n in sizes)
    for index, (number, name) in enumerate([(1, "ggo"), (2, "consolidation")]):
        key = f"Segment{index}_"
        assert pairs[key + "Name"] == name and pairs[key + "LabelValue"] == str(number)
        assert pairs[key + "Layer"] == "0" and pairs[key + "Extent"] == extent and pairs[key + "ID"]
        colour = [float(c) for c in pairs[key + "Color"].split()]
        np.testing.assert_allclose(colour, np.array(OKABE_ITO[number]) / 255, atol=1e-5)
        assert pairs[key + "ColorAutoGenerated"] == "0" and pairs[key + "NameAutoGenerated"] == "0"
    assert "Segment2_ID" not in pairs
    assert pairs["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    # ITK, Slicer's reader, hands the same pairs on, and the voxels are the labels given
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.ReadImage(str(out))
    assert image.GetMetaData("Segment1_Name") == "consolidation"
    data = gzip.decompress(out.read_bytes().split(b"\n\n", 1)[1])
    assert np.frombuffer(data, np.uint8).sum() == int(labels.sum())


def test_nifti_label_map_drops_the_ct_display_range_and_says_label(tmp_path):
    """A label map copied the CT's cal_min / cal_max (-1000..1000 here), with which a viewer that
    honours them shows labels 1 and 2 as near black; its intent now says label map."""
    nib = pytest.importorskip("nibabel")
    ct = nib.load(str(_chest_nifti(tmp_path)))
    ct.header["cal_min"], ct.header["cal_max"] = -1000.0, 1000.0
    path = tmp_path / "ct.nii"
    nib.save(ct, str(path))
    volume, _ = read_input(path)
    out = write_nifti(_classes_of(volume.hu), volume, tmp_path / "labels.nii")
    raw = out.read_bytes()[:348]  # the NIfTI-1 header, read by its byte layout
    intent_code, = struct.unpack_from("<h", raw, 68)
    cal_max, cal_min = struct.unpack_from("<ff", raw, 124)
    assert (cal_min, cal_max) == (0.0, 0.0)
    assert intent_code == 1002  # NIFTI_INTENT_LABEL


def _edgeseg(*args, cwd):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_predict_writes_a_slicer_segmentation_and_both_class_tables(bundle_dir, tmp_path):
    """``predict --out x.seg.nrrd --label-table x.ctbl --label-table x.txt``: the bundle's class
    names, in the colours of its figures, for Slicer and for ITK-SNAP."""
    series = DATA / "dcmqi_ct_liver" / "ct-3slice"
    done = _edgeseg("predict", bundle_dir, series, "--out", "pre.seg.nrrd", "--label-table", "pre.ctbl",
                    "--label-table", "pre.label", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _, pairs = _nrrd_fields(tmp_path / "pre.seg.nrrd")
    assert (pairs["Segment0_Name"], pairs["Segment0_LabelValue"]) == ("liver", "1")
    slicer = [line.split() for line in (tmp_path / "pre.ctbl").read_text().splitlines() if not line.startswith("#")]
    assert slicer == [["0", "background", "0", "0", "0", "0"], ["1", "liver", *map(str, OKABE_ITO[1]), "255"]]
    snap = [line for line in (tmp_path / "pre.label").read_text().splitlines() if not line.startswith("#")]
    rows = [(line.split('"')[0].split(), line.split('"')[1]) for line in snap]
    assert rows == [(["0", "0", "0", "0", "0", "0", "0"], "Clear Label"),
                    (["1", *map(str, OKABE_ITO[1]), "1", "1", "1"], "liver")]


@pytest.mark.parametrize(("tables", "fragment"), [
    (["pre.csv"], "--label-table pre.csv: name it .ctbl (3D Slicer colour table) or .txt / .label"),
    (["pre.seg.nrrd"], "--label-table pre.seg.nrrd"),
    (["pre.ctbl", "pre.ctbl"], "--label-table pre.ctbl is where another output of this run writes"),
], ids=["unknown-suffix", "not-a-table", "twice"])
def test_a_label_table_that_cannot_be_written_is_refused_before_segmenting(bundle_dir, tmp_path, tables, fragment,
                                                                           assert_one_line_error):
    series = DATA / "dcmqi_ct_liver" / "ct-3slice"
    args = [a for table in tables for a in ("--label-table", table)]
    done = _edgeseg("predict", bundle_dir, series, "--out", "pre.seg.nrrd", *args, cwd=tmp_path)
    assert_one_line_error(done, fragment)
    assert list(tmp_path.iterdir()) == []


def test_predict_names_a_missing_nrrd_writer_before_segmenting(bundle_dir, tmp_path, python_without,
                                                               assert_one_line_error):
    series = DATA / "dcmqi_ct_liver" / "ct-3slice"
    done = python_without(["-m", "edgeseg.cli", "predict", str(bundle_dir), str(series), "--out", "pre.seg.nrrd"],
                          tmp_path, absent=("nrrd",))
    assert_one_line_error(done, "Slicer segmentation (.seg.nrrd) output needs the 'pynrrd' package: "
                                "pip install 'edgeseg[io]'")
    assert done.stdout == "" and not list(tmp_path.glob("pre*"))


def test_seg_nrrd_is_compressed_at_zlibs_default_level(tmp_path):
    """Level 9 (pynrrd's default) spent several times the CPU for a file a fifth smaller
    (docs/results.md); the deflate data is exactly zlib's at level 6 on the label bytes."""
    import zlib

    volume, _ = read_input(_chest_nifti(tmp_path))
    labels = _classes_of(volume.hu)
    out = write_seg_nrrd(labels, volume, CLASSES, tmp_path / "pre.seg.nrrd")
    member = out.read_bytes().split(b"\n\n", 1)[1]
    raw = gzip.decompress(member)
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    assert member[10:-8] == packer.compress(raw) + packer.flush()  # gzip header, deflate data, trailer
