"""Slice-folder reader: 2-D images and masks (Kaggle style) grouped into one Volume per case.

A slice folder holds ``images/`` and ``masks/`` with the same file stems (PNG, JPEG, ...). The
pixels carry no geometry and no unit, so the caller declares what a pixel means with an
``intensity`` string, and the case each slice belongs to is read from its file name: splits
are made per case, so every copy of a patient's slices must land in the same case.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError, require
from edgeseg.limits import PIXELS_ENV, check_slice, check_volume, configure_pillow, current_limits

Image = require("PIL.Image", "io", "reading PNG/JPG slice folders")
UnidentifiedImageError = Image.UnidentifiedImageError

from edgeseg.data.slice_masks import decode_masks, mask_channel, palette_to_grey
from edgeseg.data.volume import Volume, default_affine
from edgeseg.progress import progress_bar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# "flipped_10001_103" -> case "10001", slice 103: an optional prefix (augmentation copies such
# as flipped_ / mirrored_) is dropped so that all copies of a volume share one case.
DEFAULT_CASE_PATTERN = r"(?:.*_)?(?P<case>[^_]+)_(?P<slice>\d+)$"
# Folders of unrelated slices (one patient each, e.g. "017.jpg"): every file is its own case.
CASE_PER_FILE = "file"
_CASE_PER_FILE_PATTERN = r"(?P<case>.+)(?P<slice>)"
DEFAULT_INTENSITY = "hu-clipped:0,255"
EIGHT_BIT_MODES = ("L", "LA", "RGB", "RGBA", "P", "1")
# Modes whose first channel is not grey, read through the mode named: then grey or refused as colour.
_CONVERTED_MODES = {"CMYK": "RGB", "YCbCr": "RGB", "1": "L"}
# Grey stored as RGB (as the MSD slices are) has R = G = B; lossy JPEG may part them by a few
# levels, annotation or mask colours by far more.
GREY_TOLERANCE = 16
_INTENSITY_RE = re.compile(r"^(hu-clipped|window):\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class SliceIntensity:
    """What a stored pixel means, parsed from ``"hu-clipped:LO,HI"`` or ``"window:LO,HI"``.

    ``hu-clipped``: the pixel is the HU value, clipped to [LO, HI] when the slices were made.
    ``window``: pixels 0..255 map linearly onto the HU window [LO, HI].
    """

    mode: str
    low: float
    high: float

    @classmethod
    def parse(cls, text: str) -> SliceIntensity:
        match = _INTENSITY_RE.match(text.strip())
        if match is None:
            raise DataError(
                f"intensity must be 'hu-clipped:LO,HI' or 'window:LO,HI' (HU numbers), got {text!r}"
            )
        mode, low, high = match.group(1), float(match.group(2)), float(match.group(3))
        if not low < high:
            raise DataError(f"intensity {text!r}: LO must be below HI")
        return cls(mode, low, high)

    def to_hu(self, pixels: np.ndarray, image_mode: str, path: Path) -> np.ndarray:
        """Convert one slice's pixels to float32 HU, refusing pixels the declaration cannot hold."""
        values = pixels.astype(np.float32)
        if self.mode == "window":
            if image_mode not in EIGHT_BIT_MODES:
                raise DataError(f"{path} is a {image_mode} image; 'window:' expects 8-bit pixels 0..255")
            return np.float32(self.low) + values / np.float32(255.0) * np.float32(self.high - self.low)
        low, high = float(values.min()), float(values.max())
        if low < self.low or high > self.high:
            raise DataError(
                f"{path} has pixel values {low:g}..{high:g} outside the declared "
                f"hu-clipped range {self.low:g}..{self.high:g}"
            )
        return values


def _image_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise DataError(f"{path} and {files[path.stem]} have the same name; expected one file per slice")
        files[path.stem] = path
    return files


def _read_channel0(path: Path, palette_as_grey: bool = False) -> tuple[np.ndarray, str]:
    """First channel of an image (grey stored as RGB is common) and the file's PIL mode.

    With ``palette_as_grey`` (masks) a palette image is read through its palette, which must
    be grey (see :func:`~edgeseg.data.slice_masks.palette_to_grey`). The size in the header is checked against the pixel limit before anything is decoded;
    Pillow's own bomb check is set to the same limit and turned into that error.
    """
    configure_pillow(Image)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                columns, rows = image.size
                check_slice(rows, columns, path)
                frames = getattr(image, "n_frames", 1)
                if frames > 1:  # only the first would be read, the rest of the stack dropped unseen
                    raise DataError(f"{path} holds {frames} frames (pages); edgeseg reads one slice per file: save "
                                    f"each slice as a file of its own")
                image.load()  # PIL decodes lazily; a truncated file fails here
                if image.mode in _CONVERTED_MODES and not (image.mode == "1" and palette_as_grey):
                    # channel 0 of CMYK is cyan, and YCbCr's luma alone would pass a colour image as grey;
                    # a bilevel image's white is 255, as viewers show it (a bilevel mask keeps 0/1: classes)
                    image = image.convert(_CONVERTED_MODES[image.mode])
                mode = image.mode
                if mode == "P" and palette_as_grey:
                    pixels = palette_to_grey(np.asarray(image), image.getpalette("RGB"), path)
                else:
                    if mode == "P":
                        image = image.convert("RGB")
                    pixels = np.asarray(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        raise DataError(f"{path}: an image of {claimed.group(1) if claimed else 'too many'} pixels is over the "
                        f"limit of {current_limits().max_pixels} (--max-pixels or {PIXELS_ENV})") from None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types for corrupt files
        raise DataError(f"cannot read image {path}: {' '.join(str(exc).split()) or type(exc).__name__}") from None
    if pixels.ndim == 3 and palette_as_grey and mode in ("RGBA", "LA"):
        pixels = mask_channel(pixels, path)
    if pixels.ndim == 3:
        if pixels.shape[-1] >= 3:
            _check_grey(pixels[..., :3], path, "mask" if palette_as_grey else "image")
        pixels = pixels[..., 0]
    if pixels.ndim != 2 or pixels.size == 0:
        raise DataError(f"cannot read image {path}: decoded to shape {list(pixels.shape)}, not a 2-D slice")
    if pixels.dtype.kind not in "biuf":
        raise DataError(f"image {path} has {pixels.dtype} pixels; expected grey levels")
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise DataError(f"image {path} has NaN or infinite pixel values")
    return pixels, mode


def _check_grey(rgb: np.ndarray, path: Path, what: str) -> None:
    """Refuse a colour image: only its red channel would be read, so a green or blue mask would be
    background and a colour photo's red would be taken for HU."""
    spread = rgb.max(axis=-1).astype(np.int32) - rgb.min(axis=-1)
    if spread.max() > GREY_TOLERANCE:
        row, column = np.unravel_index(int(np.argmax(spread)), spread.shape)
        colour = tuple(int(c) for c in rgb[row, column])
        raise DataError(f"{what} {path} is a colour image (row {row}, column {column} is RGB {colour}); edgeseg "
                        f"reads grey levels, stored as grey or as RGB with R = G = B")


def _case_and_slice(stem: str, pattern: re.Pattern, path: Path) -> tuple[str, int]:
    match = pattern.fullmatch(stem)
    if match is None:
        raise DataError(
            f"file name {path.name} does not match the case pattern {pattern.pattern!r}; "
            f"pass case_pattern= with groups (?P<case>...) and (?P<slice>...), or 'file' for one case per file"
        )
    number = match.group("slice")
    return match.group("case"), int(number) if number else 0


def _compile_pattern(case_pattern: str) -> re.Pattern:
    if case_pattern == CASE_PER_FILE:
        case_pattern = _CASE_PER_FILE_PATTERN
    try:
        pattern = re.compile(case_pattern)
    except re.error as exc:
        raise DataError(f"case pattern {case_pattern!r} is not a valid regular expression: {exc}") from exc
    if not {"case", "slice"} <= set(pattern.groupindex):
        raise DataError(f"case pattern {case_pattern!r} needs named groups 'case' and 'slice'")
    return pattern


def read_slice_folder(
    folder: str | os.PathLike,
    intensity: str = DEFAULT_INTENSITY,
    mask_threshold: int = 127,
    case_pattern: str = DEFAULT_CASE_PATTERN,
    progress: bool = False,
    mask: str = "auto",
    label_values: Iterable[int] | None = None,
) -> list[Volume]:
    """Read ``images/`` (+ ``masks/``) slices into one Volume per case, sorted by case id.

    ``intensity`` declares what a pixel means (see :class:`SliceIntensity`); the Volume's
    ``hu_range`` records the declared range. ``mask`` says what the masks are: ``"binary"``
    (channel 0 > ``mask_threshold`` is label 1; JPEG masks carry compression noise),
    ``"labels"`` (grey 0..N or a greyscale palette: the values are the labels) or ``"auto"``
    (decided from the values, see :mod:`edgeseg.data.slice_masks`). ``label_values``, when
    given, are the label values the caller maps to classes: a mask holding another foreground
    value is refused. Without a ``masks/`` folder the volumes have no label. Slices of a case
    are ordered by slice number, then name; ``slice_ids`` are the file stems; ``case_pattern``
    ``"file"`` makes every file its own case. Slices have no geometry: spacing is (1, 1, 1), and
    the volumes are marked ``contiguous=False``.
    """
    return read_slice_folder_with_kind(folder, intensity, mask_threshold, case_pattern, progress, mask,
                                       label_values)[0]


def read_slice_folder_with_kind(
    folder: str | os.PathLike,
    intensity: str = DEFAULT_INTENSITY,
    mask_threshold: int = 127,
    case_pattern: str = DEFAULT_CASE_PATTERN,
    progress: bool = False,
    mask: str = "auto",
    label_values: Iterable[int] | None = None,
) -> tuple[list[Volume], str | None]:
    """:func:`read_slice_folder`, plus the mask kind read (``"binary"``, ``"labels"``, or None
    without masks)."""
    folder = Path(folder)
    spec = SliceIntensity.parse(intensity)
    pattern = _compile_pattern(case_pattern)
    if not 0 <= mask_threshold < 255:
        raise DataError(f"mask_threshold must be in 0..254, got {mask_threshold}")
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    if not images_dir.is_dir():
        raise DataError(f"slice folder {folder} has no images/ subfolder")
    images = _image_files(images_dir)
    if not images:
        raise DataError(f"no images found in {images_dir}")
    masks = _image_files(masks_dir) if masks_dir.is_dir() else None
    strays = sorted(set(masks or ()) - set(images))
    if strays:  # its image is missing (or misnamed): that slice would drop out of the data unseen
        raise DataError(f"mask {masks[strays[0]]} has no image of the same name in {images_dir}")

    cases: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for stem, path in images.items():
        case, number = _case_and_slice(stem, pattern, path)
        if masks is not None and stem not in masks:
            raise DataError(f"image {path} has no mask in {masks_dir}")
        cases[case].append((number, stem))

    kind, labels = None, {}
    if masks is not None:
        raw = {stem: _read_channel0(masks[stem], palette_as_grey=True)[0] for stem in images}
        labels, kind = decode_masks(raw, masks, mask, mask_threshold, label_values)
    volumes = []
    for case in progress_bar(sorted(cases), desc="reading slices", unit="case", shown=progress):
        stems = [stem for _, stem in sorted(cases[case])]
        hu = []
        for stem in stems:
            pixels, mode = _read_channel0(images[stem])
            if hu and pixels.shape != hu[0].shape:
                raise DataError(
                    f"{images[stem]} is {pixels.shape} pixels but case {case} started with "
                    f"{hu[0].shape} ({images[stems[0]].name}); slices of a case must share a size"
                )
            if not hu:
                check_volume((len(stems), *pixels.shape), f"case {case} of {folder}")
            hu.append(spec.to_hu(pixels, mode, images[stem]))
            if masks is not None and labels[stem].shape != pixels.shape:
                raise DataError(
                    f"mask {masks[stem]} is {labels[stem].shape} pixels but its image is {pixels.shape}"
                )
        volumes.append(
            Volume(
                hu=np.stack(hu),
                spacing=(1.0, 1.0, 1.0),
                affine=default_affine((1.0, 1.0, 1.0)),
                case_id=case,
                label=np.stack([labels[stem] for stem in stems]) if masks is not None else None,
                hu_range=(spec.low, spec.high),
                source=str(folder),
                slice_ids=stems,
                # Neighbouring files are unrelated 2-D slices, not a scanned stack.
                contiguous=False,
                spacing_known=False,
            )
        )
    return volumes, kind
