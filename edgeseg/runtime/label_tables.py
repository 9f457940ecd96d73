"""Class names and colours for annotation tools: 3D Slicer colour tables, ITK-SNAP label
descriptions, and the segment fields of a Slicer segmentation (``.seg.nrrd``).

A label map alone carries numbers; these files tell Slicer and ITK-SNAP what each number is
called and how to draw it, in the colours of every edgeseg figure
(:func:`~edgeseg.runtime.overlay.class_rgb`), so a pre-annotation opens with the classes named
and coloured as the evaluation overlays show them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from edgeseg.atomic import atomic_write_text
from edgeseg.errors import DataError
from edgeseg.runtime.overlay import class_rgb

# --label-table suffixes: a Slicer colour table, or an ITK-SNAP label description file
# (ITK-SNAP's own "Export label descriptions" writes .txt; .label is the other name in use).
TABLE_KINDS = {".ctbl": "slicer", ".txt": "itk-snap", ".label": "itk-snap"}


def foreground(class_names: dict[int, str]) -> list[tuple[int, str]]:
    """The (number, name) of every class but background (0), in number order."""
    return [(int(k), str(v)) for k, v in sorted(class_names.items()) if int(k) > 0]


def table_kind(path: str | os.PathLike) -> str:
    """``"slicer"`` or ``"itk-snap"`` by the suffix of ``path``, or DataError naming the suffixes."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_KINDS:
        raise DataError(f"--label-table {path}: name it .ctbl (3D Slicer colour table) or .txt / .label "
                        "(ITK-SNAP label descriptions)")
    return TABLE_KINDS[suffix]


def slicer_colour_table(class_names: dict[int, str]) -> str:
    """A 3D Slicer colour table: ``value name r g b a`` per line, 0..255, background transparent.
    Slicer splits a line at white space, so white space in a name becomes ``_`` (as Slicer
    itself writes such names)."""
    rows = [(0, "background", (0, 0, 0), 0)] + [(k, name, class_rgb(k), 255) for k, name in foreground(class_names)]
    lines = ["# Color table file written by edgeseg", f"# {len(rows)} values"]
    lines += [f"{k} {_one_word(name) or f'class_{k}'} {r} {g} {b} {a}" for k, name, (r, g, b), a in rows]
    return "\n".join(lines) + "\n"


def _one_word(name: str) -> str:
    return re.sub(r"\s+", "_", name.strip())


def itksnap_label_descriptions(class_names: dict[int, str]) -> str:
    """An ITK-SNAP label description file (``IDX -R- -G- -B- -A-- VIS MSH LABEL``), class 0 the
    transparent "Clear Label" as ITK-SNAP names it. A double quote would end the quoted label,
    so one in a name becomes a single quote."""
    lines = ["################################################",
             "# ITK-SnAP Label Description File",
             "# File format:",
             "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
             "# Fields:",
             "#    IDX:   Zero-based index",
             "#    -R-:   Red color component (0..255)",
             "#    -G-:   Green color component (0..255)",
             "#    -B-:   Blue color component (0..255)",
             "#    -A-:   Label transparency (0.00 .. 1.00)",
             "#    VIS:   Label visibility (0 or 1)",
             "#    MSH:   Label mesh visibility (0 or 1)",
             "#  LABEL:   Label description",
             "################################################",
             f'{0:5d} {0:5d} {0:4d} {0:4d} {0:8d} {0:2d} {0:2d}    "Clear Label"']
    for k, name in foreground(class_names):
        r, g, b = class_rgb(k)
        lines.append(f'{k:5d} {r:5d} {g:4d} {b:4d} {1:8d} {1:2d} {1:2d}    "{name.replace(chr(34), chr(39))}"')
    return "\n".join(lines) + "\n"


def write_label_table(class_names: dict[int, str], out: str | os.PathLike) -> Path:
    """Write the class table ``out``'s suffix names (:func:`table_kind`), atomically."""
    kind = table_kind(out)
    text = slicer_colour_table(class_names) if kind == "slicer" else itksnap_label_descriptions(class_names)
    atomic_write_text(out, text)
    return Path(out)


def slicer_segment_fields(class_names: dict[int, str], shape_xyz: tuple[int, int, int]) -> dict[str, str]:
    """The key/value fields of a Slicer segmentation file (``.seg.nrrd``) of one layer holding
    every class: per segment its ID, name, colour (0..1), label value (the class number), layer 0
    and extent. Every segment gets the whole grid as its extent, empty or not: Slicer builds a
    layer's shared label map from the extent of the first segment it reads in that layer, so an
    empty first segment's extent would lose the others. Names and colours are marked as given
    (not auto-generated), so Slicer keeps them instead of choosing its own."""
    extent = " ".join(f"0 {n - 1}" for n in shape_xyz)
    fields = {"Segmentation_MasterRepresentation": "Binary labelmap",
              "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
              "Segmentation_ReferenceImageExtentOffset": "0 0 0"}
    for index, (k, name) in enumerate(foreground(class_names)):
        if "\n" in name or "\r" in name:  # a line break would end the NRRD field
            raise DataError(f"class name {name!r} holds a line break; a .seg.nrrd field cannot")
        key = f"Segment{index}_"
        fields.update({key + "ID": f"Segment_{k}", key + "Name": name,
                       key + "Color": " ".join(f"{c / 255:.6g}" for c in class_rgb(k)),
                       key + "ColorAutoGenerated": "0", key + "NameAutoGenerated": "0",
                       key + "LabelValue": str(k), key + "Layer": "0", key + "Extent": extent})
    return fields
