"""Masks of slice folders: binary 0/255 images or label maps (grey 0..N or a greyscale palette).

Which kind a folder holds is decided once for the whole folder from the values its masks use,
so one empty mask cannot flip the reading of its neighbours: values all within 0..127 are class
numbers (a label map); one non-zero value above that is a binary mask (0/255, 0/65535); JPEG
masks with values above 127 are binary masks whose compression spread the two levels, and are
thresholded. Several non-zero values above 127 in lossless masks (150 and 300 in 16-bit PNGs,
0/128/255 grey levels, soft edges) could be classes or one foreground, so they are refused
rather than merged: ``mask="binary"`` or ``"labels"`` says which.
A palette PNG is read through its palette, and only when every index it uses is a grey entry:
a colour palette has no class order that edgeseg could read without guessing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgeseg.data.label_values import LABEL_TOLERANCE, off_whole, rounded_labels
from edgeseg.errors import DataError

MASK_KINDS = ("auto", "binary", "labels")
# Binary masks store foreground as 255 (JPEG noise spreads it to ~200..255); label maps store
# small class numbers. A folder whose masks never exceed this is read as a label map.
LABEL_MAP_MAX = 127
# Mask files whose compression spreads a 0/255 mask over many grey values.
LOSSY_SUFFIXES = (".jpg", ".jpeg")


def palette_to_grey(indices: np.ndarray, palette: list[int] | None, path: Path) -> np.ndarray:
    """Map palette ``indices`` to the grey levels their palette entries hold.

    Refuses a palette whose used entries are not grey (R = G = B), naming the first such index
    and its colour, since a coloured palette carries no class number edgeseg could read.
    """
    if not palette:
        raise DataError(f"mask {path} is a palette image without a palette; expected greyscale classes")
    entries = np.asarray(palette, dtype=np.uint8)
    entries = np.pad(entries, (0, 768 - entries.size)) if entries.size < 768 else entries[:768]
    rgb = entries.reshape(256, 3)
    used = np.unique(indices)
    for index in used:
        red, green, blue = (int(c) for c in rgb[index])
        if not red == green == blue:
            raise DataError(f"mask {path} has a palette that is not greyscale classes: index {int(index)} "
                            f"is the colour ({red}, {green}, {blue}); save the mask as grey levels 0..N")
    return rgb[:, 0][indices]


def mask_channel(pixels: np.ndarray, path: Path) -> np.ndarray:
    """The channel of an RGBA / LA mask (H, W, C) that holds the mask, as (H, W, C') for the grey check.

    An alpha channel that is constant carries nothing and is dropped. One that varies while the
    colour is the same everywhere holds the mask (drawn as opacity, as some annotation tools
    export it): it is returned. One that varies where the colour also varies is kept out only
    when both say the same foreground (transparent where the grey is 0); otherwise which of them
    is the mask is not clear, and the file is refused rather than read as an empty mask.
    """
    colour, alpha = pixels[..., :-1], pixels[..., -1]
    if alpha.min() == alpha.max():
        return colour
    if (colour == colour.reshape(-1, colour.shape[-1])[0]).all():
        return alpha[..., None]
    differ = (colour[..., 0] > 0) != (alpha > 0)
    if differ.any():
        row, column = (int(v) for v in np.argwhere(differ)[0])
        raise DataError(f"mask {path} holds different masks in its colour and its alpha channel (row {row}, column "
                        f"{column}: grey {int(colour[row, column, 0])}, alpha {int(alpha[row, column])}); save the "
                        f"mask as grey levels without alpha")
    return colour


def detect_mask_kind(values: Iterable[int], lossy: bool = False) -> str:
    """``"labels"``, ``"binary"`` or ``"ambiguous"`` for the mask values of a folder.

    Values within 0..:data:`LABEL_MAP_MAX` are a label map; otherwise one non-zero value, or
    ``lossy`` (JPEG) masks, are binary; anything else is ambiguous (see the module docstring).
    """
    values = sorted(set(values))
    if not values or values[-1] <= LABEL_MAP_MAX:
        return "labels"
    if lossy or len([v for v in values if v != 0]) == 1:
        return "binary"
    return "ambiguous"


def _ambiguous(present: dict[int, str], paths: dict[str, Path]) -> DataError:
    foreground = sorted(v for v in present if v != 0)
    shown = ", ".join(map(str, foreground[:6])) + (f", ... ({len(foreground)} values)" if len(foreground) > 6 else "")
    high = foreground[-1]
    labels_hint = ("--mask labels with --labels mapping each value to a class" if high <= 255
                   else f"re-save them as label values 0..255 ({high} does not fit a label map) and pass --mask labels")
    return DataError(f"masks hold the non-zero values {shown} ({high} in {paths[present[high]]}): not one binary "
                     f"foreground value, and above {LABEL_MAP_MAX} for a label map; pass --mask binary to threshold "
                     f"them into one foreground (merging them), or {labels_hint}")


def decode_masks(
    raw: dict[str, np.ndarray],
    paths: dict[str, Path],
    kind: str = "auto",
    threshold: int = 127,
    allowed: Iterable[int] | None = None,
) -> tuple[dict[str, np.ndarray], str]:
    """Turn raw mask pixels into uint8 label maps; returns them and the kind used.

    ``kind`` is ``"auto"`` (see :func:`detect_mask_kind`; ambiguous values are refused, naming
    them and a file), ``"binary"`` (channel value above
    ``threshold`` is label 1) or ``"labels"`` (values are kept; they must fit 0..255).
    ``allowed``: the label values a caller maps to classes; a foreground value outside it is
    refused with the value and the first file that holds it, rather than silently dropped.
    """
    if kind not in MASK_KINDS:
        raise DataError(f"mask kind must be one of {', '.join(MASK_KINDS)}, got {kind!r}")
    if kind != "binary":  # a float mask (TIFF) of 0.8s would truncate to background as labels
        for stem in sorted(raw):
            fraction = raw[stem][off_whole(raw[stem])] if raw[stem].dtype.kind == "f" else ()
            if len(fraction):
                raise DataError(f"mask {paths[stem]} holds the non-integer value {float(fraction[0]):g}, more than "
                                f"{LABEL_TOLERANCE:g} from a whole number; masks hold label values or 0/255 (within "
                                f"{LABEL_TOLERANCE:g} of one, rounded to it; --mask binary thresholds them at "
                                f"--mask-threshold)")
        # float32 resampling writes 0.9999999 for 1: as label numbers (and the kind's values) they are 1, not 0
        raw = {stem: rounded_labels(pixels) for stem, pixels in raw.items()}
    present: dict[int, str] = {}
    for stem in sorted(raw):
        for value in np.unique(raw[stem]).tolist():
            present.setdefault(int(value), stem)
    if kind == "auto":
        lossy = any(path.suffix.lower() in LOSSY_SUFFIXES for path in paths.values())
        kind = detect_mask_kind(present, lossy)
        if kind == "ambiguous":
            raise _ambiguous(present, paths)
    if kind == "binary":
        # a bilevel (1-bit) mask holds True for white, which no 8-bit threshold is below
        decoded = {stem: (pixels if pixels.dtype == bool else pixels > threshold).astype(np.uint8)
                   for stem, pixels in raw.items()}
        first = next((stem for stem in sorted(decoded) if decoded[stem].any()), None)
        present = {1: first} if first is not None else {}
    else:
        out_of_range = [v for v in present if not 0 <= v <= 255]
        if out_of_range:
            value = out_of_range[0]
            raise DataError(f"mask {paths[present[value]]} holds label value {value}; label maps hold 0..255")
        decoded = {stem: pixels.astype(np.uint8) for stem, pixels in raw.items()}
    if allowed is not None:
        allowed = {int(v) for v in allowed}
        for value, stem in sorted(present.items()):
            if value != 0 and value not in allowed:
                raise DataError(f"mask {paths[stem]} holds label value {value}, which --labels does not map to a "
                                f"class (it maps {', '.join(map(str, sorted(allowed)))})")
    return decoded, kind


def describe_mask_values(label_maps: Iterable[np.ndarray | None]) -> list[int]:
    """The sorted label values present in ``label_maps`` (background included)."""
    seen: set[int] = set()
    for label in label_maps:
        if label is not None:
            seen.update(int(v) for v in np.unique(label))
    return sorted(seen)
