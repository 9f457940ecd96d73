"""Hostile inputs: each case gives one `edgeseg: error:` line naming the problem, exit 2, and no output.

Every predict case points at a bundle path that does not exist: inputs and outputs are checked
before the bundle is loaded, so the error must be about the input (or output) itself.
"""

import gzip
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parents[1] / "data"
SERIES = DATA / "dcmqi_ct_liver" / "ct-3slice"
NIFTI = DATA / "totalseg_example_ct" / "example_ct_sm.nii.gz"


def edgeseg(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def predict_refused(tmp_path, source, fragment, assert_one_line_error, *extra, env=None):
    out = tmp_path / "out" / "mask.nii.gz"
    proc = edgeseg("predict", tmp_path / "no-bundle", source, "--out", out, "--quiet", *extra, env=env)
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "out").exists()
    return proc


def nifti_header_with_dims(tmp_path, dims, datatype=4, bitpix=16) -> Path:
    """A real NIfTI file (small data) whose header is edited to claim ``dims``."""
    import nibabel as nib

    path = tmp_path / "lie.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), path)
    raw = bytearray(path.read_bytes())
    raw[40:56] = struct.pack("<8h", len(dims), *dims, *([1] * (7 - len(dims))))
    raw[70:74] = struct.pack("<hh", datatype, bitpix)
    path.write_bytes(bytes(raw))
    return path


def png_claiming(tmp_path, width, height) -> Path:
    """A small PNG whose IHDR (with a valid CRC) claims ``width`` x ``height`` pixels."""
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("L", (8, 8)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(raw))
    return path


def test_nifti_claiming_30000_cubed_voxels(tmp_path, assert_one_line_error):
    lie = nifti_header_with_dims(tmp_path, (30000, 30000, 30000))
    predict_refused(tmp_path, lie, "over the limit", assert_one_line_error)


def test_uncompressed_nifti_shorter_than_its_header_claims(tmp_path, assert_one_line_error):
    lie = nifti_header_with_dims(tmp_path, (64, 64, 64))
    predict_refused(tmp_path, lie, "claims 524288 bytes", assert_one_line_error)


def test_npy_claiming_1e15_elements(tmp_path, assert_one_line_error):
    path = tmp_path / "lie.npy"
    np.save(path, np.zeros((2, 2), np.float32))
    raw = path.read_bytes().replace(b"(2, 2)", b"(31622776, 31622777)")
    path.write_bytes(raw)
    predict_refused(tmp_path, path, "over the limit", assert_one_line_error)


def test_npy_shorter_than_its_header_claims(tmp_path, assert_one_line_error):
    path = tmp_path / "short.npy"
    np.save(path, np.zeros((64, 64), np.float32))
    path.write_bytes(path.read_bytes()[:-100])
    predict_refused(tmp_path, path, "claims 16384 bytes", assert_one_line_error)


def test_zero_byte_npy(tmp_path, assert_one_line_error):
    path = tmp_path / "empty.npy"
    path.write_bytes(b"")
    proc = predict_refused(tmp_path, path, "empty.npy", assert_one_line_error)
    assert "Aborted" not in proc.stderr


@pytest.mark.parametrize("size", [20000, 13000])
def test_png_over_the_pixel_limit_is_refused_without_pillow_warning(tmp_path, size, assert_one_line_error):
    proc = predict_refused(tmp_path, png_claiming(tmp_path, size, size), "over the limit", assert_one_line_error)
    assert "DecompressionBomb" not in proc.stderr


def test_pixel_limit_from_option_and_environment(tmp_path, assert_one_line_error):
    from PIL import Image

    path = tmp_path / "slice.png"
    Image.new("L", (64, 64)).save(path)
    # 4096 pixels: over a 3000 limit, yet under twice it, where Pillow would only warn.
    proc = predict_refused(tmp_path, path, "limit of 3000", assert_one_line_error, "--max-pixels", "3000")
    assert "DecompressionBomb" not in proc.stderr
    predict_refused(tmp_path, path, "EDGESEG_MAX_PIXELS", assert_one_line_error, env={"EDGESEG_MAX_PIXELS": "3000"})


def test_volume_limit_from_option(tmp_path, assert_one_line_error):
    path = tmp_path / "vol.npy"
    np.save(path, np.zeros((4, 64, 64), np.float32))
    predict_refused(tmp_path, path, "--max-volume-bytes", assert_one_line_error, "--max-volume-bytes", "1000")


def test_phantom_of_a_million_pixels_a_side(assert_one_line_error):
    assert_one_line_error(edgeseg("data", "info", "phantom:size=1000000", "--quiet"), "over the limit")


def _series_with(tmp_path, **fields) -> Path:
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.datadict import tag_for_keyword

    series = tmp_path / "series"
    shutil.copytree(SERIES, series)
    victim = series / "02.dcm"
    dataset = pydicom.dcmread(victim)
    for keyword, text in fields.items():
        tag = tag_for_keyword(keyword)
        value = text.encode() + b" " * (len(text) % 2)
        dataset._dict[tag] = RawDataElement(tag, "DS", len(value), value, 0, False, True)
    dataset.save_as(victim)
    return series


@pytest.mark.parametrize("value, fragment", [("ab", "RescaleSlope is not a number"),
                                             ("0", "RescaleSlope is 0"),
                                             ("nan", "RescaleSlope is [nan], not finite")])
def test_dicom_rescale_slope_that_is_no_number_or_zero(tmp_path, value, fragment, assert_one_line_error):
    series = _series_with(tmp_path, RescaleSlope=value)
    proc = edgeseg("data", "info", series, "--quiet")
    assert_one_line_error(proc, fragment)
    assert "02.dcm" in proc.stderr
    predict_refused(tmp_path, series, fragment, assert_one_line_error)


def test_dicom_pixel_spacing_that_is_no_number(tmp_path, assert_one_line_error):
    series = _series_with(tmp_path, PixelSpacing="a\\b")
    assert_one_line_error(edgeseg("data", "info", series, "--quiet"), "PixelSpacing is not a number")


def test_colour_png_is_refused_not_read_as_its_red_channel(tmp_path, assert_one_line_error):
    from PIL import Image

    path = tmp_path / "photo.png"
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[4, 7] = (10, 200, 30)
    Image.fromarray(rgb).save(path)
    predict_refused(tmp_path, path, "photo.png is a colour image (row 4, column 7 is RGB (10, 200, 30))",
                    assert_one_line_error)


def test_complex_nifti_is_refused_by_name(tmp_path, assert_one_line_error):
    import nibabel as nib

    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.complex64), np.eye(4)), path)
    proc = predict_refused(tmp_path, path, "datatype is complex", assert_one_line_error)
    assert "ComplexWarning" not in proc.stderr
    assert "complex.nii.gz" in proc.stderr


def test_complex_npy_is_refused_too(tmp_path, assert_one_line_error):
    path = tmp_path / "complex.npy"
    np.save(path, np.ones((8, 8), np.complex64))
    predict_refused(tmp_path, path, "descr is complex64", assert_one_line_error)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_an_msd_case_names_the_file(tmp_path, bad, assert_one_line_error):
    import nibabel as nib

    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / "msd" / folder).mkdir(parents=True)
    for case in ("liver_1", "liver_2"):
        hu = np.zeros((16, 16, 4), np.float32)
        if case == "liver_2":
            hu[3, 4, 1] = bad
        nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / "msd" / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.uint8), np.eye(4)), tmp_path / "msd" / "labelsTr" / f"{case}.nii.gz")
    proc = edgeseg("data", "info", tmp_path / "msd", "--quiet")
    assert_one_line_error(proc, "liver_2.nii.gz: 1 voxel values are NaN or infinite")


def test_nan_in_npy_is_refused(tmp_path, assert_one_line_error):
    path = tmp_path / "nan.npy"
    array = np.zeros((8, 8), np.float32)
    array[2, 2] = np.nan
    np.save(path, array)
    predict_refused(tmp_path, path, "NaN or infinite", assert_one_line_error)


def test_checkpoint_that_is_a_text_file(tmp_path, assert_one_line_error):
    pytest.importorskip("torch")
    text = tmp_path / "model.pt"
    text.write_text("e" * 200 + "\n")
    assert_one_line_error(edgeseg("evaluate", text, "--data", "phantom:cases=2,size=32,slices=2", "--quiet"),
                          "is not an edgeseg checkpoint (neither a torch zip archive nor a pickle)")
    proc = edgeseg("export", text, "--out", tmp_path / "bundle", "--quiet")
    assert_one_line_error(proc, "is not an edgeseg checkpoint")
    assert not (tmp_path / "bundle").exists()


def test_checkpoint_holding_arbitrary_objects(tmp_path, assert_one_line_error):
    torch = pytest.importorskip("torch")
    path = tmp_path / "objects.pt"
    torch.save({"format": "edgeseg-checkpoint", "hook": print}, path)
    proc = edgeseg("evaluate", path, "--data", "phantom:cases=2,size=32,slices=2", "--quiet")
    assert_one_line_error(proc, "is not an edgeseg checkpoint (it holds objects other than tensors and plain data")
    assert "weights_only" not in proc.stderr and proc.stderr.rstrip().endswith(")")


def test_checkpoint_truncated_and_gzipped_garbage(tmp_path, assert_one_line_error):
    pytest.importorskip("torch")
    path = tmp_path / "cut.pt"
    path.write_bytes(b"PK\x03\x04" + gzip.compress(b"x" * 1000)[:50])
    assert_one_line_error(edgeseg("evaluate", path, "--data", "phantom", "--quiet"), "is not an edgeseg checkpoint (")


def _npy_input(tmp_path) -> Path:
    path = tmp_path / "slice.npy"
    np.save(path, np.zeros((32, 32), np.float32))
    return path


def test_predict_out_is_an_existing_folder(tmp_path, assert_one_line_error):
    folder = tmp_path / "taken.nii.gz"
    folder.mkdir()
    proc = edgeseg("predict", tmp_path / "no-bundle", _npy_input(tmp_path), "--out", folder, "--quiet")
    assert_one_line_error(proc, "is an existing folder")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("out", ["/proc/edgeseg-mask.nii.gz", "/proc/self/edgeseg/mask.nii.gz"])
def test_predict_out_under_proc(tmp_path, out, assert_one_line_error):
    proc = edgeseg("predict", tmp_path / "no-bundle", _npy_input(tmp_path), "--out", out, "--quiet")
    assert_one_line_error(proc, "is not a writable folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only-mode folder")
def test_predict_out_in_an_unwritable_folder(tmp_path, assert_one_line_error):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    proc = edgeseg("predict", tmp_path / "no-bundle", _npy_input(tmp_path), "--out", locked / "m.nii.gz", "--quiet")
    assert_one_line_error(proc, "is not a writable folder")


def test_predict_overlay_under_proc(tmp_path, assert_one_line_error):
    proc = edgeseg("predict", tmp_path / "no-bundle", _npy_input(tmp_path), "--out", tmp_path / "m.npy",
                   "--overlay", "/proc/overlay.png", "--quiet")
    assert_one_line_error(proc, "--overlay /proc/overlay.png")
    assert not (tmp_path / "m.npy").exists()


def test_train_out_under_proc_fails_before_training(tmp_path, assert_one_line_error):
    pytest.importorskip("torch")
    # A data source that would fail if it were read: the output check must come first.
    proc = edgeseg("train", "--data", tmp_path / "missing", "--out", "/proc/edgeseg-run", "--quiet")
    assert_one_line_error(proc, "cannot write --out /proc/edgeseg-run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only-mode folder")
def test_train_out_under_an_unwritable_folder(tmp_path, assert_one_line_error):
    pytest.importorskip("torch")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    proc = edgeseg("train", "--data", "phantom", "--out", locked / "run", "--quiet")
    assert_one_line_error(proc, "is not a writable folder")


def test_evaluate_out_that_is_a_file(tmp_path, assert_one_line_error):
    pytest.importorskip("torch")
    taken = tmp_path / "taken"
    taken.write_text("x")
    proc = edgeseg("evaluate", tmp_path / "none.pt", "--data", "phantom", "--out", taken / "sub", "--quiet")
    assert_one_line_error(proc, "is not a writable folder (it is a file)")


def test_checkpoint_that_cannot_be_read_is_a_checkpoint_error(tmp_path):
    pytest.importorskip("torch")
    from edgeseg.errors import CheckpointError
    from edgeseg.models.checkpoint import load_model

    # A regular file whose read fails (even for root): the first page of this process's memory.
    unreadable = Path("/proc/self/mem")
    if not unreadable.is_file():
        pytest.skip("needs Linux's /proc/self/mem")
    with pytest.raises(CheckpointError, match="cannot read checkpoint /proc/self/mem"):
        load_model(unreadable)


def test_manifest_nested_deeper_than_the_parser_is_one_line(tmp_path, assert_one_line_error):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("[" * 200000)
    assert_one_line_error(edgeseg("inspect", bundle), "JSON nested too deeply")


@pytest.mark.parametrize("command", [("data", "info"), ("train", "--out", "run", "--data")])
def test_data_that_is_a_device_or_a_fifo_is_refused_by_name(tmp_path, command, assert_one_line_error):
    """Neither a file nor a folder was read as a folder: "Not a directory: /dev/null"."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for source in ("/dev/null", fifo):
        args = [tmp_path / a if a == "run" else a for a in command]
        proc = edgeseg(*args, source)
        assert_one_line_error(proc, f"cannot open data {source}: neither a regular file nor a folder")
    assert sorted(os.listdir(tmp_path)) == ["fifo"]


def test_an_image_that_is_a_fifo_is_not_called_missing(tmp_path, assert_one_line_error):
    """A FIFO named like a NIfTI file was reported as "image file not found"."""
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    predict_refused(tmp_path, fifo, f"image {fifo} is not a regular file", assert_one_line_error)
