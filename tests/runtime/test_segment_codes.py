"""The codes of a DICOM SEG's segments against the context groups of DICOM PS3.16, as pydicom
ships them: each category one of CID 7150 (Segmentation Property Category), each type one of the
group its category names, with the standard's code meaning."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeseg.runtime.segment_codes import SEGMENT_CODINGS, segment_coding

pydicom = pytest.importorskip("pydicom")
from pydicom.sr.codedict import Collection  # noqa: E402

SERIES = Path(__file__).resolve().parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
# the property-type context group of each category of CID 7150 that edgeseg uses
TYPE_GROUP = {"91723000": "CID7192", "49755003": "CID7194", "85756007": "CID7191"}
# outside those groups, as docs/dicom-seg-codes.md says why: DICOM codes ground-glass opacity in
# its chest finding groups only, and has no consolidation code
OUTSIDE = {"ggo": "CID6104", "consolidation": None}


def _members(cid: str) -> set[tuple[str, str, str]]:
    return {(code.scheme_designator, code.value, code.meaning) for code in Collection(cid).concepts.values()}


def _triple(coded) -> tuple[str, str, str]:
    return (coded.scheme, coded.value, coded.meaning)


@pytest.mark.parametrize("name", [*sorted(SEGMENT_CODINGS), "a class without a code"])
def test_category_and_type_are_what_ps3_16_pairs(name):
    """Organs were filed under category "Organ" (a tissue type, CID 7191, not a category) and a
    tumour was an organ: a viewer that looks category and type up together (3D Slicer) found
    neither. Each category is now one of CID 7150 and each type one of its category's group."""
    coding = segment_coding(name)
    assert _triple(coding.category) in _members("CID7150")
    if name in OUTSIDE:
        if OUTSIDE[name] is not None:
            assert _triple(coding.property_type) in _members(OUTSIDE[name])
        return
    assert _triple(coding.property_type) in _members(TYPE_GROUP[coding.category.value])


def test_seg_segments_carry_those_codes(tmp_path):
    """A SEG of the dcmqi series with a liver, a tumour and an uncoded class, read back by
    highdicom: the codes in the file are the pairs above, and dciodvfy finds nothing to say."""
    hd = pytest.importorskip("highdicom")
    from edgeseg.data.dicom import read_dicom_series_with_refs
    from edgeseg.runtime.writers import write_dicom_seg

    volume, refs = read_dicom_series_with_refs(SERIES)
    labels = np.digitize(volume.hu, [0.0, 60.0, 200.0]).astype(np.uint8)  # three classes by HU
    out = write_dicom_seg(labels, volume, refs, {0: "background", 1: "liver", 2: "tumor", 3: "femur"},
                          tmp_path / "seg.dcm")
    seg = hd.seg.segread(out)
    for number in (1, 2, 3):
        description = seg.get_segment_description(number)
        category, kind = (description.segmented_property_category, description.segmented_property_type)
        assert (category.scheme_designator, category.value, category.meaning) in _members("CID7150")
        assert (kind.scheme_designator, kind.value, kind.meaning) in _members(TYPE_GROUP[category.value])
    if shutil.which("dciodvfy"):
        done = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, errors="replace")
        problems = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("Error", "Warning"))
                    and "Retired Person Name form" not in line]  # the source's own name, copied as it is
        assert problems == []
