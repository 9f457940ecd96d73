"""A data source's cases one at a time, for passes over a data set that need one volume in memory.

:func:`open_case_readers` gives, read in order, the Volumes :func:`~edgeseg.data.open.open_dataset`
gives, with the same checks, as one reader per case where the case id is known before reading:
phantoms, NIfTI dataset folders, and trees of DICOM series folders labelled by SEGs inside
the series folders or by NIfTI label maps in ``labelsTr/``. Other sources are one reader of all
their cases (``case_id`` None): a slice folder (small 2-D images whose case ids come from the
file names), one NIfTI file or DICOM series, a NIfTI folder where two files share a case id, and a
DICOM tree with SEG files outside the series folders (which series such a SEG labels is known only
once all are read).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeseg.data.volume import Volume
from edgeseg.errors import DataError


@dataclass(frozen=True)
class CaseReader:
    """``read()`` returns the Volumes of one case (``case_id``), or of the whole source (None)."""

    case_id: str | None
    read: Callable[[], list[Volume]]


def open_case_readers(
    source: str | os.PathLike,
    *,
    intensity: str | None = None,
    mask_threshold: int = 127,
    case_pattern: str | None = None,
    label_file: str | os.PathLike | None = None,
    mask: str = "auto",
    label_values: Iterable[int] | None = None,
) -> list[CaseReader]:
    """Readers of the cases of ``source``, taking the arguments of
    :func:`~edgeseg.data.open.open_dataset` (see the module docstring)."""
    from edgeseg.data.open import check_source, detect_layout, open_dataset, parse_phantom_spec

    values = None if label_values is None else list(label_values)

    def read_whole() -> list[Volume]:
        return open_dataset(source, intensity=intensity, mask_threshold=mask_threshold, case_pattern=case_pattern,
                            label_file=label_file, mask=mask, label_values=values)

    whole = [CaseReader(None, read_whole)]
    # Options that only a slice folder takes, or a label file for a one-volume source: read whole,
    # where open_dataset says what does not apply.
    if label_file is not None or intensity is not None or case_pattern is not None or mask != "auto":
        return whole
    text = check_source(source)
    path = Path(text)
    if not path.exists():
        options = parse_phantom_spec(text)
        return whole if options is None else _phantom_readers(options)
    if path.is_file():
        return whole
    layout = detect_layout(path)
    readers = None
    if layout == "nifti":
        readers = _nifti_readers(path)
    elif layout == "dicom-tree":
        readers = _dicom_tree_readers(path)
    return readers or whole


def _phantom_readers(options: dict) -> list[CaseReader]:
    from edgeseg.data.phantom import phantom_case_ids, phantom_geometry, phantom_kind

    shape, spacing = phantom_geometry(options["size"], options["slices"])
    synth = phantom_kind(options.get("kind", "abdomen"))[0]
    return [CaseReader(case_id, lambda case_id=case_id: [synth(case_id, options["seed"], shape=shape,
                                                               spacing=spacing)])
            for case_id in phantom_case_ids(options["cases"])]


def _nifti_readers(path: Path) -> list[CaseReader] | None:
    from edgeseg.data.nifti import find_nifti_pairs, nifti_stem, read_nifti

    pairs = find_nifti_pairs(path)
    ids = [nifti_stem(label if label is not None else image) for image, label in pairs]
    if len(set(ids)) != len(ids):  # open_dataset names the two files
        return None
    return [CaseReader(case_id, lambda image=image, label=label, case_id=case_id:
                       [read_nifti(image, label, case_id=case_id)])
            for (image, label), case_id in zip(pairs, ids)]


def _dicom_tree_readers(path: Path) -> list[CaseReader] | None:
    from edgeseg.data.dicom import read_dicom_series_with_refs
    from edgeseg.data.dicom_seg import find_seg_files
    from edgeseg.data.open import (_has_dicom, _holds_only_segs, _label_with_segs, label_with_series_label_file,
                                   series_label_files)

    subfolders = [sub for sub in sorted(path.iterdir())
                  if sub.is_dir() and not sub.name.startswith(".") and _has_dicom(sub)]
    if find_seg_files(path) or any(_holds_only_segs(sub) for sub in subfolders):
        return None
    label_files = series_label_files(path)
    if set(label_files) - {sub.name for sub in subfolders}:  # open_dataset names the stray label
        return None

    def read(folder: Path) -> list[Volume]:
        volume, refs = read_dicom_series_with_refs(folder, case_id=folder.name)
        _label_with_segs(volume, refs, find_seg_files(folder))
        if folder.name in label_files:
            label_with_series_label_file(volume, label_files[folder.name])
        return [volume]

    return [CaseReader(sub.name, lambda sub=sub: read(sub)) for sub in subfolders]


class CaseVolumes:
    """The Volumes of ``readers`` whose case ``keep`` accepts, read one reader at a time, for a
    selection that needs two passes: iterate once to look at every volume, then :meth:`reread`
    the few volumes the selection kept. Between the passes nothing of a volume is held, except
    for a source read as one whole reader (reading it twice would only cost time)."""

    def __init__(self, readers: list[CaseReader], keep: Callable[[str], bool] = lambda case_id: True) -> None:
        self._readers = readers
        self._keep = keep
        self._counts: list[int] = []
        self._cached: list[Volume] | None = None

    def _read(self, reader: CaseReader) -> list[Volume]:
        if reader.case_id is not None and not self._keep(reader.case_id):
            return []
        return [v for v in reader.read() if self._keep(v.case_id)]

    def __iter__(self) -> Iterator[Volume]:
        self._counts = []
        for reader in self._readers:
            volumes = self._read(reader)
            self._counts.append(len(volumes))
            if len(self._readers) == 1:
                self._cached = volumes
            yield from volumes
            del volumes  # not held while the next case is read

    def reread(self, wanted: Iterable[int]) -> Iterator[tuple[int, Volume]]:
        """(index, Volume) of the volumes numbered ``wanted`` in the first pass's order,
        reading only the readers that hold one of them."""
        wanted = set(wanted)
        start = 0
        for reader, count in zip(self._readers, self._counts):
            numbers = range(start, start + count)
            start += count
            if wanted.isdisjoint(numbers):
                continue
            volumes = self._cached if self._cached is not None else self._read(reader)
            if len(volumes) != count:
                raise DataError(f"case {reader.case_id} changed while it was read: {count} volumes, then {len(volumes)}")
            yield from ((n, v) for n, v in zip(numbers, volumes) if n in wanted)
            del volumes  # not held while the next case is read
