"""A DICOM file given alone (``predict BUNDLE FILE``, ``--data FILE``) must hold a whole series,
an Enhanced CT. One slice of a single-frame series is refused with its series and folder named
(read as a volume of one slice it would be segmented as such), and any other object is named by
what it is, its modality and SOP class, in one line; nothing is written."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from edgeseg.cli.main import cli
from edgeseg.data.open import open_dataset
from edgeseg.errors import DataError
from tests.guarded_cli import GuardedCliRunner

SERIES = Path(__file__).resolve().parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"


def rt_structure_set(path: Path) -> Path:
    """An RT Structure Set header (no pixels), as a planning system writes beside the CT."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = RT_STRUCTURE_SET
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.StructureSetLabel = "liver"
    ds.save_as(path, enforce_file_format=True)
    return path


def mr_slice(path: Path) -> Path:
    ds = pydicom.dcmread(SERIES / "01.dcm")
    ds.Modality = "MR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.save_as(path)
    return path


def refusals(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each file the reader refuses alone, with the message that names it."""
    uid = pydicom.dcmread(SERIES / "01.dcm", stop_before_pixels=True).SeriesInstanceUID
    return {
        "slice": (SERIES / "01.dcm", rf"01\.dcm is one slice of series {uid}; pass its folder \(.*ct-3slice\)$"),
        "seg": (SERIES.parent / "liver.dcm", r"liver\.dcm is a DICOM SEG \(Segmentation Storage\), not a CT image$"),
        "rtstruct": (rt_structure_set(tmp_path / "rt.dcm"),
                     r"rt\.dcm is a DICOM RTSTRUCT \(RT Structure Set Storage\), not a CT image$"),
        "mr": (mr_slice(tmp_path / "mr.dcm"), r"mr\.dcm is a DICOM MR \(MR Image Storage\), not a CT image$"),
    }


@pytest.mark.parametrize("case", ["slice", "seg", "rtstruct", "mr"])
def test_a_file_that_is_not_a_whole_ct_series_is_refused_as_data(tmp_path, case):
    path, message = refusals(tmp_path)[case]
    with pytest.raises(DataError, match=message):
        open_dataset(path)


@pytest.mark.parametrize("case", ["slice", "seg", "rtstruct"])
def test_a_file_that_is_not_a_whole_ct_series_is_refused_as_predict_input(exported_bundle, tmp_path, case):
    path, message = refusals(tmp_path)[case]
    out = tmp_path / "out" / "pred.nii.gz"
    result = GuardedCliRunner().invoke(cli, ["predict", str(exported_bundle), str(path), "--out", str(out),
                                             "--backend", "onnxruntime:fp32", "--quiet"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("edgeseg: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not out.parent.exists() or not any(out.parent.iterdir())
