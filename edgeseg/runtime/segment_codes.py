"""Coded meaning of each class in a DICOM SEG: segmented property category, type and region.

A SEG segment is identified by codes, not by its label text, so a PACS or viewer can tell a
liver from a lesion whatever the model called its classes. Codes are SNOMED CT (``SCT``) where
SNOMED CT has the concept, else DICOM's own (``DCM``, PS3.16) code that the standard's context
groups use for it; docs/dicom-seg-codes.md lists them with their sources. A class name not
known here is coded as generic tissue, its label text kept.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Coded:
    """One coded concept: coding scheme designator, code value and code meaning."""

    scheme: str
    value: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.scheme} {self.value} {self.meaning}"


@dataclass(frozen=True)
class SegmentCoding:
    """The codes of one segment: category, property type and optional anatomic region."""

    category: Coded
    property_type: Coded
    region: Coded | None = None

    def to_json(self) -> dict:
        """As plain strings, for model metadata and reports."""
        out = {"category": str(self.category), "type": str(self.property_type)}
        if self.region is not None:
            out["region"] = str(self.region)
        return out


# The categories are members of CID 7150 (Segmentation Property Category), and each type a member
# of the context group its category names: CID 7192 for an anatomical structure, 7194 for a
# morphologically abnormal one, 7191 for a tissue. A PACS or viewer files a segment by its category
# (3D Slicer looks category and type up together), so an organ's category is "Anatomical
# Structure"; "Organ" is a tissue type (CID 7191), not a category.
ANATOMICAL_STRUCTURE = Coded("SCT", "91723000", "Anatomical Structure")
ABNORMAL = Coded("SCT", "49755003", "Morphologically Abnormal Structure")
LUNG = Coded("SCT", "39607008", "Lung")
TISSUE = Coded("SCT", "85756007", "Tissue")

SEGMENT_CODINGS: dict[str, SegmentCoding] = {
    "liver": SegmentCoding(ANATOMICAL_STRUCTURE, Coded("SCT", "10200004", "Liver")),
    "kidney": SegmentCoding(ANATOMICAL_STRUCTURE, Coded("SCT", "64033007", "Kidney")),
    "spleen": SegmentCoding(ANATOMICAL_STRUCTURE, Coded("SCT", "78961009", "Spleen")),
    "spine": SegmentCoding(ANATOMICAL_STRUCTURE, Coded("SCT", "421060004", "Spine")),
    # CID 7194 names SNOMED CT 108369006 "Neoplasm" (its meaning in the segmentation groups)
    "tumor": SegmentCoding(ABNORMAL, Coded("SCT", "108369006", "Neoplasm")),
    # SNOMED CT has no ground-glass opacity concept that DICOM uses; CID 6102 / 6104 code it DCM 112120.
    "ggo": SegmentCoding(ABNORMAL, Coded("DCM", "112120", "Ground glass opacity"), LUNG),
    "consolidation": SegmentCoding(ABNORMAL, Coded("SCT", "95436008", "Lung consolidation"), LUNG),
}
ALIASES = {"tumour": "tumor", "ground_glass_opacity": "ggo", "ground-glass": "ggo", "ground_glass": "ggo",
           "ground-glass-opacity": "ggo", "lung_consolidation": "consolidation"}
UNKNOWN = SegmentCoding(TISSUE, TISSUE)


def segment_coding(class_name: str) -> SegmentCoding:
    """The codes for a class called ``class_name`` (case-insensitive, common synonyms known);
    generic tissue for a name without a code here."""
    key = str(class_name).strip().lower()
    return SEGMENT_CODINGS.get(ALIASES.get(key, key), UNKNOWN)


def class_codings(labels: dict[int, str]) -> list[dict]:
    """For each foreground class of ``labels`` (value -> name): value, name and codes as text,
    as the server's model metadata and the DICOM node report them."""
    return [{"value": int(value), "name": name, **segment_coding(name).to_json()}
            for value, name in sorted(labels.items()) if int(value) > 0]
