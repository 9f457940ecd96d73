"""Slices for training, evaluation and the export gate: volumes pre-processed once with the PreprocessSpec."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeseg.data.volume import Volume
from edgeseg.errors import DataError
from edgeseg.spec import PreprocessSpec


def map_labels(label: np.ndarray, labels: dict[str, list[int]], names: dict[int, str] | None = None,
               source: str = "the label map") -> np.ndarray:
    """Source label values -> class indices (1..C-1 in ``labels`` order, 0 elsewhere).

    ``names`` (label value -> segment name, from a file that names its segments: a 3D Slicer
    ``.seg.nrrd``) match segments to classes by name, case aside, whatever value the file gave
    them: Slicer numbers segments in the order they were made, so values alone would swap
    classes an annotator re-created in another order. Where no segment is named as a class
    (Slicer's "Segment_1" ...), the names say nothing and the values decide; where some are, a
    segment named as none of the classes is refused (``source`` names the file) rather than
    placed by its value."""
    lut = np.zeros(256, dtype=np.uint8)
    for cls, values in enumerate(labels.values(), start=1):
        lut[np.asarray(values, dtype=np.int64)] = cls
    classes = {name.strip().lower(): cls for cls, name in enumerate(labels, start=1)}
    if names and any(name.strip().lower() in classes for name in names.values()):
        strays = sorted((value, name) for value, name in names.items() if name.strip().lower() not in classes)
        if strays:
            value, name = strays[0]
            raise DataError(f"{source}: segment {name!r} (label value {value}) is none of the classes "
                            f"{', '.join(labels)}; name every segment after its class")
        for value, name in names.items():
            lut[value] = classes[name.strip().lower()]
    return lut[label]


def volume_classes(volume: Volume, labels: dict[str, list[int]]) -> np.ndarray:
    """``volume``'s label map as class indices (:func:`map_labels`, by its segment names where
    its label file names them)."""
    return map_labels(volume.label, labels, volume.label_names, f"the label map of {volume.case_id}")


def check_window(volume: Volume, spec: PreprocessSpec) -> None:
    """Refuse a window that reaches outside what the source can represent.

    Slices stored as "HU clipped to [0, 255]" carry no information below 0 HU; a model trained
    on them with a wider window would learn a flat band that real scanner data does not have.
    """
    if volume.hu_range is None:
        return
    low, high = spec.window
    r_low, r_high = volume.hu_range
    if low < r_low - 1e-6 or high > r_high + 1e-6:
        raise DataError(
            f"window [{low:g}, {high:g}] HU reaches outside what {volume.case_id} can represent "
            f"[{r_low:g}, {r_high:g}] HU; use a window inside it (e.g. --window {r_low:g},{r_high:g})"
        )


def preprocess_stack(hu: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(Z, Y, X) HU -> (Z, 1, h, w) float32 model input through the C kernels, which the
    deployed runtime uses too (identical to the numpy reference within 1e-5)."""
    from edgeseg.kernels import preprocess

    return np.asarray(preprocess(hu, spec), dtype=np.float32)


@dataclass
class SliceSet:
    """Pre-processed slices of a set of cases.

    Attributes:
        images: (N, 1, h, w) float32 model input.
        labels: (N, h, w) uint8 class indices at model resolution.
        case_index: (N,) index into ``case_ids`` for each slice.
        case_ids: the cases, in order.
    """

    images: np.ndarray
    labels: np.ndarray
    case_index: np.ndarray
    case_ids: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def case_labels(self, k: int) -> np.ndarray:
        """(Z, h, w) labels of case number ``k`` (``case_index == k``), in slice order."""
        return self.labels[self.case_index == k]

    @classmethod
    def from_volumes(cls, volumes: list[Volume], spec: PreprocessSpec, labels: dict[str, list[int]]) -> "SliceSet":
        """Pre-process every slice of ``volumes``; cases without a label map are refused."""
        from edgeseg.kernels.reference import preprocess_labels

        if not volumes:
            raise DataError("no cases to build a slice set from")
        images, masks, index = [], [], []
        for i, vol in enumerate(volumes):
            if vol.label is None:
                raise DataError(f"case {vol.case_id} ({vol.source}) has no label map; training needs one")
            check_window(vol, spec)
            images.append(preprocess_stack(vol.hu, spec))
            masks.append(preprocess_labels(volume_classes(vol, labels), spec))
            index.append(np.full(vol.num_slices, i, dtype=np.int32))
        return cls(np.concatenate(images), np.concatenate(masks), np.concatenate(index), [v.case_id for v in volumes])
