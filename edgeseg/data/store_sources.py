"""The cases of a data source as separately readable groups, with the identity of their files.

The slice store (:mod:`edgeseg.data.store`) reads a source one group at a time so that building
it needs the memory of one volume, not of the data set, and keys the store on what each group is
made of (file paths, sizes and modification times; the generator options for phantoms). A NIfTI
dataset is one group per image/label pair, a phantom one group per case, a tree of DICOM series
folders one group per series folder. Sources whose cases can only be told apart by reading them
(a slice folder, whose case ids come from file names matched against a pattern, and DICOM trees
with SEG files outside the series folders) are one group read by :func:`open_dataset`; slice
folders hold small 2-D images, so that group stays small.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeseg.data.volume import Volume
from edgeseg.errors import DataError


@dataclass(frozen=True)
class CaseGroup:
    """Cases read together: ``read()`` returns their Volumes; ``identity`` says what they are made of.

    ``identity`` is a list of ``[relative path, size, mtime_ns]`` per file (or generator options
    for phantoms); a change in any entry means the group's slices must be pre-processed again.
    """

    name: str
    identity: tuple
    read: Callable[[], list[Volume]]


def file_identity(path: Path, root: Path) -> tuple:
    """``(path relative to root, size, mtime_ns)`` of one file: changes when the file does."""
    info = path.stat()
    rel = path.relative_to(root).as_posix() if path != root else path.name
    return (rel, int(info.st_size), int(info.st_mtime_ns))


def _tree_identity(folder: Path, root: Path) -> tuple:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return tuple(file_identity(p, root) for p in files)


def _phantom_groups(options: dict) -> list[CaseGroup]:
    from edgeseg.data.phantom import phantom_case_ids, phantom_geometry, phantom_kind

    shape, spacing = phantom_geometry(options["size"], options["slices"])
    synth = phantom_kind(options.get("kind", "abdomen"))[0]

    def reader(case_id: str) -> Callable[[], list[Volume]]:
        return lambda: [synth(case_id, options["seed"], shape=shape, spacing=spacing)]

    identity = tuple(sorted(options.items()))
    return [CaseGroup(case_id, (("phantom",) + identity,), reader(case_id))
            for case_id in phantom_case_ids(options["cases"])]


def _nifti_groups(path: Path) -> list[CaseGroup]:
    from edgeseg.data.nifti import find_nifti_pairs, nifti_stem, read_nifti

    groups = []
    for image, label in find_nifti_pairs(path):
        case_id = nifti_stem(label if label is not None else image)
        files = (image,) if label is None else (image, label)
        groups.append(CaseGroup(
            case_id, tuple(file_identity(f, path) for f in files),
            lambda image=image, label=label, case_id=case_id: [read_nifti(image, label, case_id=case_id)],
        ))
    return groups


def _dicom_tree_groups(path: Path) -> list[CaseGroup] | None:
    """One group per series folder, or None when SEG files outside them need the whole tree."""
    from edgeseg.data.open import _has_dicom, _holds_only_segs, open_dataset

    subfolders = [sub for sub in sorted(path.iterdir())
                  if sub.is_dir() and not sub.name.startswith(".") and _has_dicom(sub)]
    loose = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose or any(_holds_only_segs(sub) for sub in subfolders):
        return None
    return [CaseGroup(sub.name, _tree_identity(sub, path), lambda sub=sub: open_dataset(sub))
            for sub in subfolders]


def case_groups(source: str | os.PathLike, intensity: str | None = None,
                slice_options: dict | None = None) -> list[CaseGroup]:
    """Split a data source (anything :func:`~edgeseg.data.open.open_dataset` opens) into case groups.

    The groups, read in order, give the same Volumes as ``open_dataset(source, intensity=...,
    **slice_options)``; ``slice_options`` (case pattern, mask kind, label values) apply to slice folders.
    """
    slice_options = slice_options or {}
    from edgeseg.data.nifti import is_nifti_path, read_nifti
    from edgeseg.data.open import check_source, detect_layout, open_dataset, parse_phantom_spec

    text = check_source(source)
    path = Path(text)
    if not path.exists():
        options = parse_phantom_spec(text)
        if options is None:
            raise DataError(f"data folder not found: {path}")
        return _phantom_groups(options)
    path = path.resolve()
    if path.is_file():
        if not is_nifti_path(path):
            raise DataError(f"cannot open data file {path}: expected .nii / .nii.gz, or a folder")
        return [CaseGroup(path.name, (file_identity(path, path),), lambda: [read_nifti(path)])]
    layout = detect_layout(path)
    groups = None
    if layout == "nifti" and intensity is None:
        groups = _nifti_groups(path)
    elif layout == "dicom-tree" and intensity is None:
        groups = _dicom_tree_groups(path)
    if groups is None:
        # Slice folders, or a layout whose cases are only known once read: one group, read whole
        # (open_dataset also refuses options that do not apply to the layout).
        groups = [CaseGroup(path.name, _tree_identity(path, path),
                            lambda: open_dataset(path, intensity=intensity, **slice_options))]
    return groups
