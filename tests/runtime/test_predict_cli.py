"""``edgeseg predict`` on real inputs: DICOM series -> DICOM SEG, NIfTI -> NIfTI, slices -> PNG / NPY, and bad input."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edgeseg.cli.main import cli
from edgeseg.data.dicom import read_dicom_series_with_refs
from edgeseg.data.nifti import read_nifti, to_lps_layout
from edgeseg.runtime import Segmenter
from tests.guarded_cli import GuardedCliRunner

DATA = Path(__file__).resolve().parents[1] / "data"
SERIES = DATA / "dcmqi_ct_liver" / "ct-3slice"
NIFTI = DATA / "totalseg_example_ct" / "example_ct_sm.nii.gz"
JPG = sorted((DATA / "msd_liver_slices" / "images").iterdir())[0]


def predict(*args: str):
    result = GuardedCliRunner().invoke(cli, ["predict", *map(str, args), "--backend", "onnxruntime:fp32", "--quiet"])
    return result


@pytest.fixture(scope="module")
def segmenter(bundle_dir):
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as seg:
        yield seg


@pytest.fixture(scope="module")
def seg_file(bundle_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg") / "pred.dcm"
    result = predict(bundle_dir, SERIES, "--out", out)
    assert result.exit_code == 0, result.output
    assert "ct-3slice: 3 slices, backend onnxruntime:fp32 (cpu)" in result.output and "liver=" in result.output
    return out


def test_dicom_seg_references_the_series_and_holds_the_prediction(seg_file, segmenter):
    volume, refs = read_dicom_series_with_refs(SERIES)
    seg = pydicom.dcmread(seg_file)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.StudyInstanceUID == refs.study_instance_uid
    assert seg.FrameOfReferenceUID == refs.frame_of_reference_uid
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == refs.series_instance_uid
    assert {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence} == set(refs.sop_instance_uids)
    names = [segmenter.labels[k] for k in sorted(segmenter.labels) if k > 0]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == names == ["liver"]
    assert int(seg.NumberOfFrames) == len(names) * len(refs.files)  # one frame per segment and source slice
    # Decode the SEG independently of the writer: frame -> (segment, source instance) -> pixels.
    expected = refs.to_source_layout(segmenter.predict_volume(volume))
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        # With one segment the writer may record its number once, in the shared groups.
        identification = item if "SegmentIdentificationSequence" in item else shared
        number = int(identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source_uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = refs.sop_instance_uids.index(source_uid)
        np.testing.assert_array_equal(frame.astype(bool), expected[k] == number)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_dicom_seg_passes_dciodvfy(seg_file):
    done = subprocess.run(["dciodvfy", str(seg_file)], capture_output=True, text=True)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    assert errors == []



def test_dicom_seg_names_the_model_that_made_it(seg_file, bundle_dir, tmp_path):
    """Every SEG's algorithm identification said only "edgeseg 0.1.0": two bundles, or the FP32 and
    INT8 artifacts of one, made SEGs an archive could not tell apart. Each segment's Algorithm
    Parameters now name the checkpoint and the artifact run, with their sha256."""
    import hashlib
    import json

    hd = pytest.importorskip("highdicom")

    def parameters(path: Path) -> dict[str, str]:
        return hd.seg.segread(path).get_segment_description(1).algorithm_identification.parameters

    int8 = tmp_path / "int8.dcm"
    result = GuardedCliRunner().invoke(cli, ["predict", str(bundle_dir), str(SERIES), "--out", str(int8), "--backend",
                                             "onnxruntime:int8", "--quiet"])
    assert result.exit_code == 0, result.output
    checkpoint = json.loads((bundle_dir / "manifest.json").read_text())["source"]["sha256"]
    for path, artifact, backend in ((seg_file, "model.onnx", "onnxruntime:fp32"),
                                    (int8, "model.int8.onnx", "onnxruntime:int8")):
        assert parameters(path) == {"backend": backend, "model": "unet", "checkpoint_sha256": checkpoint,
                                    "artifact": artifact, "manifest_sha256": hashlib.sha256(
                                        (bundle_dir / "manifest.json").read_bytes()).hexdigest(),
                                    "artifact_sha256": hashlib.sha256((bundle_dir / artifact).read_bytes()).hexdigest()}

def test_nifti_output_lies_on_the_input_grid(bundle_dir, segmenter, tmp_path):
    import nibabel as nib

    out = tmp_path / "labels.nii.gz"
    result = predict(bundle_dir, NIFTI, "--out", out, "--overlay", tmp_path / "overlay.png")
    assert result.exit_code == 0, result.output
    written, source = nib.load(str(out)), nib.load(str(NIFTI))
    assert written.shape == source.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    labels_lps, _ = to_lps_layout(np.asarray(written.dataobj), written.affine)
    np.testing.assert_array_equal(labels_lps, segmenter.predict_volume(read_nifti(NIFTI)))
    from PIL import Image

    hu = read_nifti(NIFTI).hu
    assert Image.open(tmp_path / "overlay.png").size == (hu.shape[2], hu.shape[1])


def test_jpg_slice_to_overlay_png_and_npy(bundle_dir, segmenter, tmp_path):
    from PIL import Image

    result = predict(bundle_dir, JPG, "--out", tmp_path / "mask.npy")
    assert result.exit_code == 0, result.output
    hu = np.asarray(Image.open(JPG))[..., 0].astype(np.float32)
    np.testing.assert_array_equal(np.load(tmp_path / "mask.npy")[0], segmenter.predict(hu))
    result = predict(bundle_dir, JPG, "--out", tmp_path / "overlay.png")
    assert result.exit_code == 0, result.output
    overlay = np.asarray(Image.open(tmp_path / "overlay.png"))
    assert overlay.shape == (*hu.shape, 3)
    grey = np.all(overlay == overlay[..., :1], axis=2)
    labels = segmenter.predict(hu)
    assert not grey.all() or not labels.any()  # outlines are coloured where there is foreground
    assert grey[labels == 0].mean() > 0.95


def _assert_refused(result, message: str, out: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeseg: error:") and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not out.parent.exists() or not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_bad_bundles_are_one_line_errors(bundle_copy, tmp_path):
    out = tmp_path / "out" / "labels.npy"
    (bundle_copy / "model.onnx").write_bytes(b"not the exported model")
    _assert_refused(predict(bundle_copy, JPG, "--out", out), "tampered", out)
    (bundle_copy / "model.onnx").unlink()
    _assert_refused(predict(bundle_copy, JPG, "--out", out), "is missing", out)


def test_bad_inputs_are_one_line_errors(bundle_dir, tmp_path):
    out = tmp_path / "out" / "labels.nii.gz"
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((2, 32, 32), np.nan, np.float32))
    _assert_refused(predict(bundle_dir, nan, "--out", out), "NaN", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_refused(predict(bundle_dir, empty, "--out", out), "empty", out)
    mr = tmp_path / "mr"
    mr.mkdir()
    for path in SERIES.iterdir():
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(mr / path.name)
    _assert_refused(predict(bundle_dir, mr, "--out", out), "is MR, not CT", out)
    _assert_refused(predict(bundle_dir, JPG, "--out", tmp_path / "out" / "x.dcm"), "dicom-seg needs a DICOM series",
                    tmp_path / "out" / "x.dcm")
    _assert_refused(predict(bundle_dir, JPG, "--out", tmp_path / "out" / "x.txt"), "cannot tell the output format",
                    tmp_path / "out" / "x.txt")


@pytest.mark.parametrize("threads", [-1, 1025])
def test_a_thread_count_out_of_range_is_refused_before_any_backend_loads(bundle_dir, tmp_path, threads):
    """--threads -1 and 100000 ran before: ONNX Runtime would try to start that many threads."""
    out = tmp_path / "mask.nii.gz"
    result = predict(str(bundle_dir), str(NIFTI), "--out", str(out), "--threads", str(threads))
    assert result.exit_code == 2 and result.output == \
        f"edgeseg: error: threads must be between 0 (the backend's default) and 1024, got {threads}\n"
    assert not out.exists()
    from edgeseg.errors import BackendError

    for backend in ("auto", "onnxruntime:fp32"):
        with pytest.raises(BackendError, match="threads must be between"):
            Segmenter.load(bundle_dir, backend=backend, threads=threads)
