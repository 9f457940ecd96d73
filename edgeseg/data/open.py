"""open_dataset: the one entry point from a data source string to a list of Volumes.

Training, evaluation and the CLI all call this, so a source means the same thing everywhere:
a phantom spec, a NIfTI file, or a folder whose layout is recognised here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from edgeseg.data.dicom import looks_like_dicom, read_dicom_series
from edgeseg.data.nifti import is_nifti_path, read_nifti, read_nifti_dataset
from edgeseg.data.phantom import phantom_case_ids, phantom_geometry, synth_phantom
from edgeseg.data.slices import DEFAULT_CASE_PATTERN, DEFAULT_INTENSITY, IMAGE_SUFFIXES, read_slice_folder
from edgeseg.data.volume import Volume
from edgeseg.errors import DataError

PHANTOM_DEFAULTS = {"cases": 8, "seed": 0, "size": 128, "slices": 32}
_PHANTOM_RE = re.compile(r"^phantom(?::(.*))?$")


def parse_phantom_spec(text: str) -> dict[str, int] | None:
    """``"phantom"`` or ``"phantom:cases=8,seed=0,size=128,slices=32"`` -> its options, else None.

    Unnamed options keep :data:`PHANTOM_DEFAULTS`; unknown names or non-integer values raise.
    """
    match = _PHANTOM_RE.match(text.strip())
    if match is None:
        return None
    options = dict(PHANTOM_DEFAULTS)
    for item in filter(None, (part.strip() for part in (match.group(1) or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in PHANTOM_DEFAULTS:
            raise DataError(
                f"bad phantom option {item!r} in {text!r}; expected name=value with names "
                f"{', '.join(PHANTOM_DEFAULTS)}"
            )
        try:
            options[key] = int(value)
        except ValueError as exc:
            raise DataError(f"phantom option {key} must be an integer, got {value!r}") from exc
    if options["size"] < 16 or options["slices"] < 1 or options["seed"] < 0:
        raise DataError(f"phantom needs size >= 16, slices >= 1 and seed >= 0, got {options}")
    return options


def _open_phantom(options: dict[str, int]) -> list[Volume]:
    shape, spacing = phantom_geometry(options["size"], options["slices"])
    return [
        synth_phantom(case_id, options["seed"], shape=shape, spacing=spacing)
        for case_id in phantom_case_ids(options["cases"])
    ]


def _has_files(folder: Path, suffixes: tuple[str, ...]) -> bool:
    return any(
        p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(suffixes)
        for p in folder.iterdir()
    )


def _has_dicom(folder: Path) -> bool:
    return any(p.is_file() and not p.name.startswith(".") and looks_like_dicom(p) for p in folder.iterdir())


def detect_layout(folder: Path) -> str:
    """Name the layout of a data folder: "slices", "nifti", "dicom" or "dicom-tree"."""
    images = folder / "images"
    if images.is_dir() and _has_files(images, IMAGE_SUFFIXES):
        return "slices"
    if (folder / "imagesTr").is_dir() or images.is_dir() or _has_files(folder, (".nii", ".nii.gz")):
        return "nifti"
    if _has_dicom(folder):
        return "dicom"
    subfolders = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if any(_has_dicom(sub) for sub in subfolders):
        return "dicom-tree"
    raise DataError(f"no images found in {folder} (no slice folder, NIfTI or DICOM files)")


def open_dataset(
    source: str | os.PathLike,
    *,
    intensity: str | None = None,
    mask_threshold: int = 127,
    case_pattern: str | None = None,
    progress: bool = False,
) -> list[Volume]:
    """Open a data source as a list of Volumes (one per case), in LPS layout with HU.

    ``source`` is one of: ``"phantom"`` or ``"phantom:cases=8,seed=0,size=128,slices=32"``
    (generated in memory; an existing path of that name wins); a ``.nii`` / ``.nii.gz`` file;
    a slice folder (``images/`` + ``masks/``); a NIfTI dataset folder (``imagesTr/`` +
    ``labelsTr/``, ``images/`` + ``labels/``, or flat); a folder of DICOM files (one series);
    or a folder whose subfolders each hold one DICOM series (case id = subfolder name).
    ``intensity``, ``mask_threshold`` and ``case_pattern`` apply to slice folders only (see
    :func:`~edgeseg.data.slices.read_slice_folder`); ``progress`` shows a bar on stderr.
    """
    text = os.fspath(source)
    path = Path(text)
    if not path.exists():
        options = parse_phantom_spec(text)
        if options is not None:
            return _open_phantom(options)
        raise DataError(f"data folder not found: {path}")
    if path.is_file():
        if not is_nifti_path(path):
            raise DataError(f"cannot open data file {path}: expected .nii / .nii.gz, or a folder")
        layout = "nifti-file"
    else:
        layout = detect_layout(path)
    if layout != "slices" and (intensity is not None or case_pattern is not None):
        raise DataError(f"intensity and case_pattern apply to slice folders only; {path} is {layout} data")
    if layout == "nifti-file":
        volumes = [read_nifti(path)]
    elif layout == "slices":
        volumes = read_slice_folder(
            path,
            intensity=intensity or DEFAULT_INTENSITY,
            mask_threshold=mask_threshold,
            case_pattern=case_pattern or DEFAULT_CASE_PATTERN,
            progress=progress,
        )
    elif layout == "nifti":
        volumes = read_nifti_dataset(path, progress=progress)
    elif layout == "dicom":
        volumes = [read_dicom_series(path)]
    else:
        volumes = [read_dicom_series(sub, case_id=sub.name) for sub in sorted(path.iterdir())
                   if sub.is_dir() and not sub.name.startswith(".") and _has_dicom(sub)]
    _check_unique_cases(volumes, path)
    return volumes


def _check_unique_cases(volumes: list[Volume], path: Path) -> None:
    seen: dict[str, str] = {}
    for volume in volumes:
        if volume.case_id in seen:
            raise DataError(
                f"case id {volume.case_id!r} appears twice in {path} ({seen[volume.case_id]} and "
                f"{volume.source}); splits need one volume per case id"
            )
        seen[volume.case_id] = volume.source
