"""The HU the DICOM reader (``edgeseg predict`` on a folder or a file, ``/v1/segment`` uploads, the
DICOM node's series) gives for the pixel encodings and transfer syntaxes CT arrives in, each
checked against HU computed with numpy from the values written: stored x slope + intercept.

The series are small and built here with pydicom (identity orientation, so the volume's
``hu[z, y, x]`` is the stack as written); compressed copies are made by dcmtk's encoders."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from edgeseg.data import read_dicom_series
from edgeseg.errors import DataError

SHAPE = (3, 8, 10)


def _write_series(folder, stored: np.ndarray, signed: bool = True, bits_stored: int = 16, per_slice=None, **fields):
    """One CT series of ``stored`` (slices of raw 16-bit words) in ``folder``; ``fields`` are set
    on every slice, ``per_slice[k]`` on slice k."""
    folder.mkdir(parents=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for k, words in enumerate(stored):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, ds.SOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "HU", "Hounsfield"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber, ds.ImagePositionPatient = k + 1, [0, 0, 2.5 * k]
        ds.ImageOrientationPatient, ds.PixelSpacing, ds.SliceThickness = [1, 0, 0, 0, 1, 0], [0.7, 0.7], 2.5
        ds.Rows, ds.Columns = words.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        for name, value in {**fields, **(per_slice[k] if per_slice else {})}.items():
            setattr(ds, name, value)
        ds.PixelData = np.ascontiguousarray(words.astype(np.uint16)).tobytes()  # the 16-bit words as written
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture
def hu() -> np.ndarray:
    values = np.random.default_rng(7).integers(-1000, 1500, size=SHAPE)
    values[:, 0, :2] = (-1024, 3071)  # air and the top of a 12-bit range
    return values


def test_twelve_bit_pixels_with_garbage_above_bit_twelve(tmp_path, hu):
    """BitsStored 12 of 16 with the unused high bits set (as overlays once were): signed pixels
    take their sign from bit 11, unsigned ones ignore bits 12 to 15."""
    signed_words = ((hu - 1024) & 0x0FFF) | 0xA000  # HU - 1024 in 12-bit two's complement
    unsigned_words = ((hu + 1024) & 0x0FFF) | 0xF000
    signed = read_dicom_series(_write_series(tmp_path / "s", signed_words, True, 12, RescaleIntercept=1024))
    unsigned = read_dicom_series(_write_series(tmp_path / "u", unsigned_words, False, 12))
    np.testing.assert_array_equal(signed.hu, hu)
    np.testing.assert_array_equal(unsigned.hu, hu)


def test_monochrome1_and_a_rescale_per_slice(tmp_path, hu):
    rescales = [(1.0, -1024.0), (0.5, -1100.0), (2.0, -3000.0)]  # stored values all >= 0
    stored = np.stack([np.floor((hu[k] - b) / m) for k, (m, b) in enumerate(rescales)]).astype(np.int64)
    expected = np.stack([stored[k] * m + b for k, (m, b) in enumerate(rescales)])
    folder = _write_series(tmp_path / "m1", stored, False, PhotometricInterpretation="MONOCHROME1",
                           per_slice=[{"RescaleSlope": m, "RescaleIntercept": b} for m, b in rescales])
    np.testing.assert_array_equal(read_dicom_series(folder).hu, expected)


@pytest.mark.parametrize("rescale_type", ["US", "10^-2 mg/ml"])
def test_rescaled_values_that_are_not_hu_are_refused(tmp_path, hu, rescale_type):
    """A RescaleType other than HU (a dual-energy iodine map, an unspecified unit) was read as
    HU and segmented; now refused in one line naming the field."""
    folder = _write_series(tmp_path / "t", hu + 1024, False, RescaleType=rescale_type)
    with pytest.raises(DataError, match=r"field RescaleType is .* not Hounsfield units") as caught:
        read_dicom_series(folder)
    assert "\n" not in str(caught.value)
    np.testing.assert_array_equal(read_dicom_series(_write_series(tmp_path / "hu", hu + 1024, False,
                                                                  RescaleType="HU")).hu, hu)


def test_unsigned_pixels_without_an_intercept_are_refused(tmp_path, hu):
    """RescaleIntercept is required in a CT image: unsigned pixels without it read as 0 HU and up
    (HU + 1024 for a dropped intercept of -1024), silently. Signed pixels without a rescale are
    HU as stored, as before."""
    unsigned = _write_series(tmp_path / "u", hu + 1024, False)
    signed = _write_series(tmp_path / "s", hu, True)
    for path in [*unsigned.iterdir(), *signed.iterdir()]:
        ds = pydicom.dcmread(path)
        del ds.RescaleIntercept, ds.RescaleSlope
        ds.save_as(path)
    with pytest.raises(DataError, match=r"lacks RescaleIntercept and its pixels are unsigned"):
        read_dicom_series(unsigned)
    np.testing.assert_array_equal(read_dicom_series(signed).hu, hu)


def test_padding_outside_the_field_of_view_reads_as_air_at_most(tmp_path, hu):
    """PixelPaddingValue 63536 in unsigned pixels (and the range up to PixelPaddingRangeLimit)
    read as 62512 HU: a ring of metal round the patient. Now no more than -1024 HU; a signed
    padding of -2000 HU (already below air) stays as stored."""
    words = hu + 1024
    words[:, 1, :] = 63536
    words[:, 2, :3] = (63000, 63300, 62999)  # in the range, in the range, just outside it
    folder = _write_series(tmp_path / "u", words, False, PixelPaddingValue=63536, PixelPaddingRangeLimit=63000)
    expected = np.where((words >= 63000) & (words <= 63536), np.minimum(words - 1024, -1024), words - 1024)
    np.testing.assert_array_equal(read_dicom_series(folder).hu, expected)
    assert expected[0, 2, 2] == 62999 - 1024  # the oracle does keep a value outside the range

    signed = hu.copy()
    signed[:, 1, :] = -2000
    folder = _write_series(tmp_path / "s", signed, True, RescaleIntercept=0, PixelPaddingValue=-2000)
    np.testing.assert_array_equal(read_dicom_series(folder).hu, signed)


def test_a_padding_value_outside_the_pixels_range_is_ignored_with_one_warning(tmp_path, caplog):
    """12-bit unsigned pixels with PixelPaddingValue 63536 (-2000 written unsigned, which no
    12-bit unsigned pixel holds): it was taken modulo 4096 as 2096, a real value (1072 HU, bone),
    and every pixel of 2096 read as -1024 HU. Now the padding value is ignored, with one warning
    for the series naming the field, and the pixels read as stored + intercept."""
    words = np.tile(np.array([0, 1024, 2096, 3000]), (SHAPE[0], 2, 1))
    folder = _write_series(tmp_path / "u", words, False, bits_stored=12, PixelPaddingValue=63536)
    with caplog.at_level("WARNING", logger="edgeseg"):
        got = read_dicom_series(folder).hu
    np.testing.assert_array_equal(got, words - 1024.0)  # the oracle: stored x 1 - 1024, nothing padded
    assert got[0, 0, 2] == 1072
    warned = [r.getMessage() for r in caplog.records if "PixelPaddingValue" in r.getMessage()]
    assert len(warned) == 1 and "63536" in warned[0] and "ignored" in warned[0], warned


@pytest.mark.parametrize("bits", [16, 12])
def test_a_signed_padding_value_written_unsigned_is_read_with_its_sign(tmp_path, hu, bits):
    """Signed pixels whose PixelPaddingValue is written with VR US (63536: -2000 as a 16-bit
    word) pad where they hold -2000; an intercept of +1500 puts that at -500 HU, inside the body's
    range, so the padding must be found to read as air (-1024) there."""
    import pydicom

    words = np.clip(hu, -1000, 500)
    words[:, 1, :] = -2000
    folder = _write_series(tmp_path / "s", words, True, bits_stored=bits, RescaleIntercept=1500)
    for path in folder.iterdir():  # the padding value as a US element, the VR a signed image's writer may use
        ds = pydicom.dcmread(path)
        ds.add_new(0x00280120, "US", 63536)
        ds.save_as(path)
    assert pydicom.dcmread(next(folder.iterdir()))[0x00280120].VR == "US"
    expected = np.where(words == -2000, -1024.0, words + 1500.0)  # the oracle
    np.testing.assert_array_equal(read_dicom_series(folder).hu, expected)

# transfer syntax -> the dcmtk command writing a file in it
ENCODERS = {
    "jpeg-lossless-sv1": ["dcmcjpeg", "+e1"],
    "jpeg-lossless-process14": ["dcmcjpeg", "+el"],
    "jpeg-ls-lossless": ["dcmcjpls"],
    "rle": ["dcmcrle"],
    "deflated": ["dcmconv", "+td"],
}


@pytest.mark.parametrize("signed, bits", [(True, 16), (True, 12), (False, 12)])
@pytest.mark.parametrize("syntax", sorted(ENCODERS))
def test_compressed_series_read_the_hu_of_the_uncompressed_one(tmp_path, hu, syntax, signed, bits):
    """JPEG Lossless (a PACS's usual CT archive syntax) failed "(truncated?)": no decoder was
    installed with edgeseg[io]. Every lossless syntax now reads to the HU written."""
    if not shutil.which(ENCODERS[syntax][0]):
        pytest.skip(f"{ENCODERS[syntax][0]} (dcmtk) is not installed")
    words = hu - 1024 if signed else hu + 1024
    native = _write_series(tmp_path / "native", words, signed, bits, RescaleIntercept=1024 if signed else -1024)
    packed = tmp_path / syntax
    packed.mkdir()
    for path in sorted(native.iterdir()):
        subprocess.run([*ENCODERS[syntax], str(path), str(packed / path.name)], check=True, capture_output=True)
    assert pydicom.dcmread(next(packed.iterdir())).file_meta.TransferSyntaxUID != ExplicitVRLittleEndian
    np.testing.assert_array_equal(read_dicom_series(packed).hu, hu)


def test_pixel_data_no_decoder_reads_is_named_not_called_truncated(tmp_path, hu):
    """A sound file in a transfer syntax without a decoder here (High-Throughput JPEG 2000, whose
    one plugin is pylibjpeg-openjpeg) was reported as "cannot decode pixel data (truncated?)".
    And 12-bit JPEG Extended, which only pylibjpeg-libjpeg decodes, likewise."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    if get_decoder(pydicom.uid.HTJ2KLossless).is_available:
        pytest.skip("a High-Throughput JPEG 2000 decoder is installed")
    folder = _write_series(tmp_path / "htj2k", hu + 1024, False)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)] * 1)  # a codestream's start: never decoded
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = pydicom.uid.HTJ2KLossless
        ds.save_as(path)
    with pytest.raises(DataError, match=r"High-Throughput JPEG 2000 .*no installed decoder reads it") as caught:
        read_dicom_series(folder)
    assert "truncated" not in str(caught.value)

    if not shutil.which("dcmcjpeg") or "pylibjpeg" in get_decoder(pydicom.uid.JPEGExtended12Bit).available_plugins:
        return
    native = _write_series(tmp_path / "native", hu + 1024, False, 12)
    extended = tmp_path / "extended"
    extended.mkdir()
    for path in native.iterdir():
        subprocess.run(["dcmcjpeg", "+ee", str(path), str(extended / path.name)], check=True, capture_output=True)
    with pytest.raises(DataError, match=r"12-bit JPEG Extended .* only pylibjpeg-libjpeg decodes") as caught:
        read_dicom_series(extended)
    assert "truncated" not in str(caught.value)
