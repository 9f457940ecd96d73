"""The conformance statement's "Usage of attributes from received IODs" names every attribute the
node reads to split a series into its volumes (edgeseg.data.dicom_volumes): a PACS engineer
reads that section to learn which attributes of the images the node acts on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")

from edgeseg.data import dicom_volumes  # noqa: E402

PAGE = Path(__file__).parents[2] / "docs" / "dicom-conformance.md"


def usage_section() -> str:
    text = PAGE.read_text()
    found = re.search(r"^### 7\.2 Usage of attributes from received IODs\n(.*?)(?=^#|\Z)", text, re.S | re.M)
    assert found, "docs/dicom-conformance.md has no section '7.2 Usage of attributes from received IODs'"
    return " ".join(found.group(1).split())


@pytest.mark.parametrize("keyword", ["ImageType", "InstanceNumber", *dicom_volumes.SPLIT_ATTRIBUTES])
def test_each_attribute_splitting_a_series_is_in_the_usage_section(keyword):
    name = pydicom.datadict.dictionary_description(keyword)  # 'StackID' -> 'Stack ID'
    assert name in usage_section(), f"section 7.2 does not name {name} ({keyword}), which the volume split reads"
