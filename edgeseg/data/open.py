"""open_dataset: the one entry point from a data source string to a list of Volumes.

Training, evaluation and the CLI all call this, so a source means the same thing everywhere:
a phantom spec, a NIfTI file, or a folder whose layout is recognised here. DICOM SEG files are
label maps, never series: they attach to the CT series they reference.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
import re
from pathlib import Path

from edgeseg.data.dicom import DicomSeriesInfo, looks_like_dicom, read_dicom_series_with_refs
from edgeseg.data.dicom_seg import find_seg_files, is_seg_file, seg_referenced_series
from edgeseg.data.labels import attach_label_file
from edgeseg.data.nifti import is_nifti_path, label_files, read_nifti, read_nifti_dataset
from edgeseg.data.phantom import phantom_case_ids, phantom_geometry, phantom_kind
from edgeseg.data.slices import DEFAULT_CASE_PATTERN, DEFAULT_INTENSITY, IMAGE_SUFFIXES, read_slice_folder
from edgeseg.data.volume import Volume
from edgeseg.errors import DataError
from edgeseg.limits import check_volume

PHANTOM_DEFAULTS = {"cases": 8, "seed": 0, "size": 128, "slices": 32}
# Beside DICOM series folders: NIfTI label maps named after them (labelsTr/CASE.nii.gz).
SERIES_LABEL_FOLDER = "labelsTr"
_PHANTOM_RE = re.compile(r"^(phantom|chest-phantom)(?::(.*))?$")


def check_source(source: str | os.PathLike, what: str = "the data source") -> str:
    """``source`` as text; DataError when it is blank: an empty path would be read as the current
    folder (``Path("")`` is ``.``), which nobody means by an empty argument."""
    text = os.fspath(source)
    if not text.strip():
        raise DataError(f"{what} is empty ({text!r}); name a data folder, a NIfTI file or a phantom such as 'phantom'")
    return text


def same_data(a: str, b: str) -> bool | None:
    """Whether two data arguments name the same data: True or False where that can be told (the
    same text; two phantom specs with the same options, ``phantom`` and ``phantom:cases=8`` alike;
    two existing paths to one folder or file); None where it cannot (a path that no longer exists,
    or two paths that differ: data moved or copied elsewhere, whose cases then decide)."""
    if a == b:
        return True
    try:
        specs = parse_phantom_spec(a), parse_phantom_spec(b)
    except DataError:
        return False
    if specs[0] is not None or specs[1] is not None:
        return specs[0] == specs[1]
    with contextlib.suppress(OSError):
        if Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve():
            return True
    return None


def parse_phantom_spec(text: str) -> dict[str, int | str] | None:
    """``"phantom"`` or ``"phantom:cases=8,seed=0,size=128,slices=32"`` -> its options, else None.

    ``"chest-phantom"`` (same options) names the chest phantom; the result's ``kind`` is
    ``"abdomen"`` or ``"chest"``. Unnamed options keep :data:`PHANTOM_DEFAULTS`; unknown names
    or non-integer values raise.
    """
    match = _PHANTOM_RE.match(text.strip())
    if match is None:
        return None
    options: dict = dict(PHANTOM_DEFAULTS)
    given: set[str] = set()
    for item in filter(None, (part.strip() for part in (match.group(2) or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key in given:
            raise DataError(f"phantom option {key} is given twice in {text!r}")
        given.add(key)
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
    if options["cases"] < 1:
        raise DataError(f"phantom needs cases >= 1, got {options['cases']}")
    # Every case is held in memory at once, so the dataset as a whole must fit the volume limit.
    check_volume((options["cases"] * options["slices"], options["size"], options["size"]), f"phantom {text!r}")
    options["kind"] = "chest" if match.group(1) == "chest-phantom" else "abdomen"
    return options


def _open_phantom(options: dict) -> list[Volume]:
    shape, spacing = phantom_geometry(options["size"], options["slices"])
    synth = phantom_kind(options.get("kind", "abdomen"))[0]
    return [
        synth(case_id, options["seed"], shape=shape, spacing=spacing)
        for case_id in phantom_case_ids(options["cases"])
    ]


def _has_files(folder: Path, suffixes: tuple[str, ...]) -> bool:
    return any(
        p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(suffixes)
        for p in folder.iterdir()
    )


def _has_dicom(folder: Path) -> bool:
    return any(p.is_file() and not p.name.startswith(".") and looks_like_dicom(p) for p in folder.iterdir())


def _holds_only_segs(folder: Path) -> bool:
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and looks_like_dicom(p)]
    return bool(files) and all(is_seg_file(p) for p in files)


def detect_layout(folder: Path) -> str:
    """Name the layout of a data folder: "slices", "nifti", "dicom" or "dicom-tree"."""
    if not folder.is_dir():  # a device, a FIFO: reading it as a folder failed with "Not a directory"
        raise DataError(f"cannot open data {folder}: neither a regular file nor a folder")
    images = folder / "images"
    if images.is_dir() and _has_files(images, IMAGE_SUFFIXES):
        return "slices"
    if (folder / "imagesTr").is_dir() or images.is_dir() or _has_files(folder, (".nii", ".nii.gz")):
        return "nifti"
    subfolders = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    has_dicom_subfolders = any(_has_dicom(sub) for sub in subfolders)
    if _has_dicom(folder):
        # SEG files next to series folders (dcmqi's layout) label those series.
        return "dicom-tree" if has_dicom_subfolders and _holds_only_segs(folder) else "dicom"
    if has_dicom_subfolders:
        return "dicom-tree"
    raise DataError(f"no images found in {folder} (no slice folder, NIfTI or DICOM files)")


def check_openable(source: str) -> None:
    """DataError for a source :func:`open_dataset` would refuse before reading any case: a path
    that does not exist and is no phantom spec (or a phantom spec with a bad option), a file that
    is not NIfTI, a folder holding no images. Reads names and a few file headers only, so a
    command can refuse a mistyped --data before its own set-up."""
    path = Path(source)
    if not path.exists():
        if parse_phantom_spec(source) is None:
            raise DataError(f"data folder not found: {path}")
    elif path.is_file():
        if not is_nifti_path(path) and not looks_like_dicom(path):
            raise DataError(f"cannot open data file {path.resolve()}: expected .nii / .nii.gz, a DICOM file, or a folder")
    else:
        detect_layout(path.resolve())


def open_dataset(
    source: str | os.PathLike,
    *,
    intensity: str | None = None,
    mask_threshold: int = 127,
    case_pattern: str | None = None,
    label_file: str | os.PathLike | None = None,
    progress: bool = False,
    mask: str = "auto",
    label_values: Iterable[int] | None = None,
) -> list[Volume]:
    """Open a data source as a list of Volumes (one per case), in LPS layout with HU.

    ``source`` is one of: ``"phantom"`` or ``"phantom:cases=8,seed=0,size=128,slices=32"``
    (``"chest-phantom:..."`` for the chest phantom; generated in memory; an existing path of that name wins); a ``.nii`` / ``.nii.gz`` file;
    a DICOM file holding a series (an Enhanced CT multi-frame image);
    a slice folder (``images/`` + ``masks/``); a NIfTI dataset folder (``imagesTr/`` +
    ``labelsTr/``, ``images/`` + ``labels/``, or flat); a folder of DICOM files (one series);
    or a folder whose subfolders each hold one DICOM series (case id = subfolder name), labelled
    by DICOM SEGs or by NIfTI label maps ``labelsTr/CASE.nii.gz`` beside the series folders.
    DICOM SEG files become the labels of the series they reference: a SEG inside a series
    folder must reference that series; a SEG in the parent folder of series folders, or in a
    subfolder holding only SEGs, labels whichever of those series it references. At most one
    SEG per series. ``label_file`` (NIfTI, NRRD or DICOM SEG, see
    :func:`~edgeseg.data.labels.read_label_file`) labels a source that holds exactly one
    unlabelled volume: a NIfTI file or one DICOM series. ``intensity``, ``mask_threshold``,
    ``case_pattern``, ``mask`` and ``label_values`` apply to slice folders only (see
    :func:`~edgeseg.data.slices.read_slice_folder`); ``progress`` shows a bar on stderr.
    """
    text = check_source(source)
    path = Path(text)
    if not path.exists():
        options = parse_phantom_spec(text)
        if options is not None:
            if label_file is not None:
                raise DataError(f"label_file {label_file} needs a source with one volume; {text!r} "
                                f"generates labelled phantom cases")
            return _open_phantom(options)
        raise DataError(f"data folder not found: {path}")
    if path.is_file():
        if not is_nifti_path(path) and not looks_like_dicom(path):
            raise DataError(f"cannot open data file {path}: expected .nii / .nii.gz, a DICOM file, or a folder")
        layout = "nifti-file" if is_nifti_path(path) else "dicom-file"
    else:
        layout = detect_layout(path)
    if layout != "slices" and (intensity is not None or case_pattern is not None or mask != "auto"):
        raise DataError(f"intensity, case_pattern and mask apply to slice folders only; {path} is {layout} data")
    if label_file is not None and layout not in ("nifti-file", "dicom-file", "dicom", "dicom-tree"):
        raise DataError(f"label_file {label_file} needs a source with one volume (a NIfTI file or a "
                        f"DICOM series folder); {path} is a {layout} folder of several cases")
    masks = {"mask": mask, "label_values": label_values}
    cases = _read_cases(path, layout, intensity, mask_threshold, case_pattern, progress,
                        one_volume=label_file is not None, masks=masks)
    if label_file is not None:
        _attach_label_file(*cases[0], Path(label_file))
    volumes = [volume for volume, _ in cases]
    _check_unique_cases(volumes, path)
    return volumes


def recorded_slice_options(train_config: dict | None) -> dict:
    """The slice-folder options a training run recorded (``case_pattern``, ``mask``), so that
    export and evaluation read the run's own data as training did; empty for older runs."""
    config = train_config or {}
    options = {"case_pattern": config.get("case_pattern"), "mask": config.get("mask") or "auto"}
    return {key: value for key, value in options.items() if value not in (None, "auto")}


def run_read_options(source: str, train_config: dict | None, intensity: str | None = None) -> dict:
    """``open_dataset`` options that read ``source`` as a run read its training slices: on a
    slice folder, ``intensity`` or else the run's recorded one, with its case pattern and mask
    kind; on other data (volumes carry HU and geometry) none of them, except an ``intensity``
    the caller gave, which ``open_dataset`` then refuses by name."""
    given = {"intensity": intensity} if intensity else {}
    path = Path(source)
    try:
        slices = path.is_dir() and detect_layout(path) == "slices"
    except DataError:  # an empty or unreadable folder: open_dataset says what is wrong with it
        slices = True
    if not slices:
        return given
    recorded = (train_config or {}).get("intensity")
    return {**({"intensity": recorded} if recorded else {}), **given, **recorded_slice_options(train_config)}


def _read_cases(path: Path, layout: str, intensity: str | None, mask_threshold: int,
                case_pattern: str | None, progress: bool, one_volume: bool, masks: dict | None = None,
                ) -> list[tuple[Volume, DicomSeriesInfo | None]]:
    """Read every case of a source of a known layout, with the DICOM references where any."""
    if layout == "nifti-file":
        return [(read_nifti(path), None)]
    if layout == "slices":
        volumes = read_slice_folder(
            path,
            intensity=intensity or DEFAULT_INTENSITY,
            mask_threshold=mask_threshold,
            case_pattern=case_pattern or DEFAULT_CASE_PATTERN,
            progress=progress,
            **(masks or {}),
        )
        return [(volume, None) for volume in volumes]
    if layout == "nifti":
        return [(volume, None) for volume in read_nifti_dataset(path, progress=progress)]
    if layout == "dicom":
        return _read_dicom_folder(path)
    if layout == "dicom-file":  # one file holding a series: an Enhanced CT
        return [read_dicom_series_with_refs(path, case_id=path.stem)]
    return _read_dicom_tree(path, one_volume)


def _label_with_segs(volume: Volume, refs: DicomSeriesInfo, segs: list[Path]) -> None:
    """Give ``volume`` the label map of its one DICOM SEG, if it has one."""
    if len(segs) > 1:
        raise DataError(f"{len(segs)} DICOM SEG files label series {refs.series_instance_uid} of "
                        f"{volume.case_id} ({', '.join(str(seg) for seg in segs)}); keep one")
    if segs:
        attach_label_file(volume, segs[0], refs)


def _read_dicom_folder(path: Path) -> list[tuple[Volume, DicomSeriesInfo]]:
    volume, refs = read_dicom_series_with_refs(path, case_id=path.name)
    _label_with_segs(volume, refs, find_seg_files(path))
    return [(volume, refs)]


def _read_dicom_tree(path: Path, one_volume: bool) -> list[tuple[Volume, DicomSeriesInfo]]:
    subfolders = [sub for sub in sorted(path.iterdir())
                  if sub.is_dir() and not sub.name.startswith(".") and _has_dicom(sub)]
    series_folders = [sub for sub in subfolders if not _holds_only_segs(sub)]
    loose_segs = find_seg_files(path) + [seg for sub in subfolders if sub not in series_folders
                                         for seg in find_seg_files(sub)]
    if one_volume and len(series_folders) != 1:
        raise DataError(f"label_file needs a source with one volume; {path} holds "
                        f"{len(series_folders)} series folders")
    cases = [read_dicom_series_with_refs(sub, case_id=sub.name) for sub in series_folders]
    # A loose SEG belongs to whichever series it references; that is known only once read.
    claimed: dict[str, list[Path]] = {refs.series_instance_uid: [] for _, refs in cases}
    for seg in loose_segs:
        referenced = seg_referenced_series(seg)
        targets = [uid for uid in referenced if uid in claimed]
        if not targets:
            raise DataError(f"SEG {seg} does not reference series of any subfolder of {path}; it "
                            f"references {', '.join(referenced) or 'no series'}")
        for uid in targets:
            claimed[uid].append(seg)
    for (volume, refs), folder in zip(cases, series_folders):
        _label_with_segs(volume, refs, find_seg_files(folder) + claimed[refs.series_instance_uid])
    _label_with_nifti_files(path, [volume for volume, _ in cases])
    return cases


def series_label_files(path: Path) -> dict[str, Path]:
    """The label maps ``labelsTr/CASE.nii.gz`` (or a 3D Slicer ``CASE.seg.nrrd``) beside the series
    folders of ``path``, by case id (CASE: the series folder's name); empty without such a folder."""
    folder = path / SERIES_LABEL_FOLDER
    return label_files(folder) if folder.is_dir() else {}


def label_with_series_label_file(volume: Volume, label_path: Path) -> None:
    """Give the series ``volume`` its label map file (the grid must match the series)."""
    if volume.label is not None:
        raise DataError(f"{volume.case_id} in {label_path.parent.parent} has a DICOM SEG and the label map "
                        f"{label_path}; keep one")
    attach_label_file(volume, label_path)


def _label_with_nifti_files(path: Path, volumes: list[Volume]) -> None:
    """Give each series its NIfTI label map ``labelsTr/CASE.nii.gz`` (CASE: the series folder's
    name), as ``edgeseg data synth --format dicom`` writes them; the grid must match the series."""
    files = series_label_files(path)
    by_case = {volume.case_id: volume for volume in volumes}
    strays = sorted(set(files) - set(by_case))
    if strays:
        raise DataError(f"label {files[strays[0]]} has no series folder {path / strays[0]}")
    for case_id, label_path in files.items():
        label_with_series_label_file(by_case[case_id], label_path)


def _attach_label_file(volume: Volume, refs: DicomSeriesInfo | None, label_file: Path) -> None:
    if volume.label is not None:
        raise DataError(f"{volume.case_id} from {volume.source} already has a label map (a DICOM SEG "
                        f"beside the series); label_file {label_file} would be a second one (ambiguous)")
    attach_label_file(volume, label_file, refs)


def _check_unique_cases(volumes: list[Volume], path: Path) -> None:
    seen: dict[str, str] = {}
    for volume in volumes:
        if volume.case_id in seen:
            raise DataError(
                f"case id {volume.case_id!r} appears twice in {path} ({seen[volume.case_id]} and "
                f"{volume.source}); splits need one volume per case id"
            )
        seen[volume.case_id] = volume.source
