"""The segments of a 3D Slicer segmentation (``.seg.nrrd``) and their layers, as one label map.

Slicer stores a segmentation as an NRRD image whose custom fields describe each segment
(``SegmentN_Name``, ``SegmentN_LabelValue``, ``SegmentN_Layer``, ...). Segments that do not
overlap share one 3-D layer, each under its own label value; where segments overlap, or
sometimes only because they were made that way, the file has a leading ``list`` axis with one
3-D layer per group of segments, and a label value means a segment only within its own layer
(segments of two layers may both be 1). See Slicer's developer guide, "Segmentation labelmap
file format (.seg.nrrd)".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError


@dataclass(frozen=True)
class Segment:
    """One segment: its display name, the value it has in its layer and the layer's index."""

    name: str
    value: int
    layer: int

    @property
    def key(self) -> str:
        """The class the segment stands for: its name, case and surrounding blanks aside."""
        return self.name.strip().lower()


def is_slicer_segmentation(header: dict) -> bool:
    """True for an NRRD header Slicer wrote as a segmentation (``Segmentation_*`` or
    ``Segment0_ID`` fields)."""
    return "Segment0_ID" in header or any(str(key).startswith("Segmentation_") for key in header)


def read_segments(header: dict, path: Path) -> list[Segment]:
    """The segments a Slicer segmentation's header lists, in its order. Files from Slicer
    releases before shared label maps have no label value or layer fields: each segment then
    has a layer of its own (in a file with one layer, that layer), holding it as 1."""
    layered = len(np.atleast_1d(header.get("sizes", ()))) > 3
    segments: list[Segment] = []
    while f"Segment{len(segments)}_ID" in header:
        key = f"Segment{len(segments)}_"
        name = str(header.get(key + "Name", header[key + "ID"])).strip()
        try:
            value = int(str(header.get(key + "LabelValue", "1")).strip())
            layer = int(str(header.get(key + "Layer", len(segments) if layered else 0)).strip())
        except ValueError:
            raise DataError(f"label {path}: field {key}LabelValue or {key}Layer is not a whole number") from None
        if not 0 < value < 256:
            raise DataError(f"label {path}: segment {name!r} has label value {value}; expected 1..255")
        segments.append(Segment(name, value, layer))
    return segments


def check_layers(segments: list[Segment], layers: int, path: Path) -> None:
    """Refuse a segment whose layer the file does not have."""
    for segment in segments:
        if not 0 <= segment.layer < layers:
            raise DataError(f"label {path}: segment {segment.name!r} is in layer {segment.layer}, but the file has "
                            f"{layers} layer{'s' if layers != 1 else ''}")


def one_layer_names(segments: list[Segment], path: Path) -> dict[int, str] | None:
    """Label value -> segment name of a one-layer segmentation (the values are the file's own),
    or None for a file without segments."""
    names: dict[int, str] = {}
    for segment in segments:
        if segment.value in names:
            raise DataError(f"label {path}: segments {names[segment.value]!r} and {segment.name!r} both have label "
                            f"value {segment.value}")
        names[segment.value] = segment.name
    return names or None


def merged_values(segments: list[Segment], path: Path) -> dict[str, int]:
    """The label value each class (segment name, case aside) takes in the merged label map: its
    first segment's own value where no class before it took that value, else the lowest value
    no class asked for, so a file whose values are distinct keeps them all."""
    wanted: dict[str, int] = {}
    for segment in segments:
        wanted.setdefault(segment.key, segment.value)
    values: dict[str, int] = {}
    for key, value in wanted.items():
        if value not in values.values():
            values[key] = value
    free = iter(sorted(set(range(1, 256)) - set(wanted.values())))
    for key in wanted:
        if key not in values:
            values[key] = next(free, 0)
            if not values[key]:
                raise DataError(f"label {path} has {len(wanted)} differently named segments; one uint8 label map "
                                "holds at most 255")
    return values


def merge_layers(layers: np.ndarray, segments: list[Segment], affine_ras: np.ndarray,
                 path: Path) -> tuple[np.ndarray, dict[int, str]]:
    """One (x, y, z) uint8 label map and its value -> name table from a segmentation's
    (layer, x, y, z) uint8 layers. Segments of one name are one class and may overlap; where two
    segments of different names share a voxel, one label map cannot hold both, and the file is
    refused naming the two segments and the first such voxel (its index in the file and its RAS
    position in mm, as Slicer's data probe shows it). A value a layer holds that no segment of
    that layer has is refused too: it would drop out unseen."""
    check_layers(segments, layers.shape[0], path)
    for layer in range(layers.shape[0]):
        counts = np.bincount(layers[layer].ravel(), minlength=256)
        counts[[0] + [s.value for s in segments if s.layer == layer]] = 0
        if counts.any():
            raise DataError(f"label {path}: layer {layer} holds value {int(np.flatnonzero(counts)[0])}, which "
                            "none of its segments has")
    values = merged_values(segments, path)
    merged = np.zeros(layers.shape[1:], dtype=np.uint8)
    for index, segment in enumerate(segments):
        mask = layers[segment.layer] == segment.value
        value = values[segment.key]
        clash = np.flatnonzero(mask & (merged != 0) & (merged != value))
        if clash.size:
            voxel = np.unravel_index(int(clash[0]), merged.shape)
            other = next(s for s in segments[:index] if s.key != segment.key and layers[(s.layer, *voxel)] == s.value)
            ras = affine_ras[:3] @ np.array([*voxel, 1.0])
            raise DataError(f"label {path}: segments {other.name!r} and {segment.name!r} overlap, e.g. at voxel "
                            f"{tuple(int(i) for i in voxel)} of the file (RAS {', '.join(f'{c:.1f}' for c in ras)} "
                            "mm); one label map cannot give a voxel two classes: in Slicer, remove the overlap "
                            "and save again")
        merged[mask] = value
    names = {}
    for segment in segments:
        names.setdefault(values[segment.key], segment.name)
    return merged, names
