"""Whether a DICOM series' Body Part Examined holds what a bundle segments.

A bundle names its classes; the classes say where in the body the model looks (a liver in the
abdomen, lung lesions in the chest). A series whose ``BodyPartExamined`` (0018,0015) is a
defined term of DICOM PS3.16 Annex L that does not hold that region (a head, a knee, a chest CT
into a liver model) is segmented all the same, since the field is optional and often wrong, but
with one warning: the labels cover what the series holds of the organ, at most its edge, and
look like a result. Free text and terms not listed here give no warning.
"""

from __future__ import annotations

# Which defined terms hold each region, whole.
HOLDS = {
    "abdomen": {"ABDOMEN", "ABDOMENPELVIS", "CHESTABDOMEN", "CHESTABDPELVIS", "WHOLEBODY", "LIVER", "KIDNEY",
                "SPLEEN", "TORSO"},
    "chest": {"CHEST", "LUNG", "THORAX", "CHESTABDOMEN", "CHESTABDPELVIS", "WHOLEBODY", "HEADNECKCHEST", "TORSO"},
}
# The defined terms judged: a series with one of these that its region's set lacks is warned of.
KNOWN = set().union(*HOLDS.values()) | {
    "HEAD", "BRAIN", "SKULL", "NECK", "HEADNECK", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "PELVIS", "HIP",
    "EXTREMITY", "ARM", "LEG", "KNEE", "SHOULDER", "ELBOW", "WRIST", "HAND", "ANKLE", "FOOT", "HEART", "BREAST",
}
# Each class edgeseg knows by name, and the region it lies in.
CLASS_REGIONS = {"liver": "abdomen", "kidney": "abdomen", "spleen": "abdomen", "ggo": "chest",
                 "consolidation": "chest", "ground_glass_opacity": "chest", "infection": "chest"}


def body_part_warning(body_part: str | None, labels: dict[int, str], what: str = "series") -> str | None:
    """One line saying why ``body_part`` (a series' BodyPartExamined) does not hold the classes
    of ``labels``, or None where it does, is empty, or is not a term judged here."""
    part = str(body_part or "").strip().upper()
    if part not in KNOWN:
        return None
    regions = {CLASS_REGIONS[name.strip().lower()] for value, name in labels.items()
               if int(value) > 0 and name.strip().lower() in CLASS_REGIONS}
    missing = sorted(region for region in regions if part not in HOLDS[region])
    if not missing:
        return None
    names = ", ".join(name for value, name in sorted(labels.items()) if int(value) > 0)
    return (f"{what} is BodyPartExamined {part}, which does not hold the {' and '.join(missing)} this bundle segments "
            f"({names}): its labels cover at most an edge of it; check that this is the series meant")
