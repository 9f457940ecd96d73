"""``edgeseg predict``: segment a DICOM series, NIfTI volume, PNG/JPG slice or NPY array with a bundle.

Only click is imported at start; the runtime and the reader for the input's format load when
the command runs, so a prediction never pays for torch, scipy or matplotlib.
"""

from __future__ import annotations

import click

from edgeseg.cli.finite_range import FiniteFloatRange
from edgeseg.cli.input_limits import input_limit_options
from edgeseg.cli.quiet_option import quiet_option
from edgeseg.cli.tta_option import tta_option


@click.command("predict")
@input_limit_options
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Output file (or folder for PNGs of a volume).")
@click.option("--format", "fmt", type=click.Choice(["nifti", "seg-nrrd", "dicom-seg", "png", "npy"], case_sensitive=False), default=None,
              help="Output format (default: from the --out suffix: .nii.gz, .seg.nrrd (3D Slicer segmentation), "
                   ".dcm, .png, .npy).")
@click.option("--backend", default="auto", show_default=True,
              help="auto, or a backend name (onnxruntime, openvino, tensorrt, onnxruntime-gpu, torchscript), "
                   "optionally with :fp32 / :fp16 / :int8; comma-separate to give a fallback order; or a "
                   "KServe v2 model address http://HOST:PORT/models/NAME or grpc://HOST:PORT/models/NAME (edgeseg serve, "
                   "Triton) to run the "
                   "network there.")
@click.option("--threads", default=0, show_default=True, help="CPU threads for the backend (0: its default).")
@click.option("--batch-size", default=None, type=int, help="Slices per model call (default: the bundle's, at most 8).")
@click.option("--overlay", default=None, type=click.Path(),
              help="Also write one overlay PNG of the slice with the most foreground.")
@click.option("--label-table", "label_tables", multiple=True, type=click.Path(dir_okay=False),
              help="Also write the classes' names and colours for annotation tools: .ctbl a 3D Slicer colour "
                   "table, .txt or .label an ITK-SNAP label description file (repeat for both).")
@click.option("--spacing", default=None, metavar="Z,Y,X",
              help="Voxel size in mm of an INPUT that carries none (.npy, PNG/JPG): needed where the bundle "
                   "removes 3-D components by volume (mL), and written to a NIfTI output. DICOM and NIfTI "
                   "inputs carry their own.")
@click.option("--intensity", default=None,
              help="What PNG/JPG pixels mean: 'hu-clipped:LO,HI' or 'window:LO,HI' [default: what the bundle's "
                   "training slices meant, as its manifest records; else hu-clipped:0,255].")
@click.option("--timeout", default=None, type=FiniteFloatRange(min=0, min_open=True),
              help="Seconds to wait for each answer of a remote --backend http://... server [default: 60].")
@click.option("--volume", default=None, type=click.IntRange(min=1), metavar="K",
              help="A DICOM series holding several volumes (stacks, orientations, temporal positions; "
                   "docs/data.md): segment volume K; without it such a series is refused with the list.")
@tta_option
@quiet_option
def command(bundle, input_path, out, fmt, backend, threads, batch_size, overlay, label_tables, spacing, intensity,
            timeout, volume, tta, quiet) -> None:
    """Segment INPUT with BUNDLE and write the label map to --out; prints a one-line summary."""
    import logging
    import time

    import numpy as np

    from edgeseg.data.volume import label_counts
    from edgeseg.errors import DataError, EdgesegError
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.overlay import display_window
    from edgeseg.runtime.provenance import provenance
    from edgeseg.runtime.readers import IMAGE_SUFFIXES, bundle_intensity, check_input_path, input_kind, read_input
    from edgeseg.runtime.seg_sources import seg_source_datasets
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.runtime.writers import check_nifti_grid, format_for

    start = time.perf_counter()
    fmt = format_for(out, fmt)
    if timeout is not None:  # before the input is read: a local backend would ignore it
        from edgeseg.runtime.runners.remote import check_remote_timeout, is_remote

        check_remote_timeout(timeout, backend if is_remote(backend) else None)
    check_input_path(input_path)
    _check_outputs(input_path, out, fmt, overlay, label_tables)
    kind = input_kind(input_path)
    if spacing is not None and kind in ("dicom", "nifti"):
        raise DataError(f"--spacing is for inputs without geometry (.npy, PNG/JPG); {input_path} carries its own")
    if volume is not None and kind != "dicom":
        raise DataError(f"--volume picks a volume of a DICOM series; {input_path} is not one")
    spacing = _parse_spacing(spacing)
    if intensity is None and str(input_path).lower().endswith(IMAGE_SUFFIXES):
        try:
            intensity, recorded = bundle_intensity(read_manifest(bundle).source)
        except EdgesegError:  # the input is checked first; loading the bundle then says what is wrong
            intensity, recorded = None, False
        if recorded:
            logging.getLogger("edgeseg.predict").info(
                "reading %s's pixels as %s, the intensity of the bundle's training slices", input_path, intensity)
    picked: dict = {"volume": volume} if volume is not None else {}
    if kind == "dicom" and volume is None:  # imported for DICOM only: pydicom is an extra
        from edgeseg.data.dicom_volumes import PICK_WITH_OPTION

        picked = {"pick_hint": PICK_WITH_OPTION}
    volume, refs = read_input(input_path, progress=not quiet, keep_headers=fmt == "dicom-seg",
                              even_grid=fmt in ("nifti", "seg-nrrd"), **({"intensity": intensity} if intensity else {}),
                              **picked)
    if spacing is not None:
        from dataclasses import replace

        from edgeseg.data.volume import default_affine

        volume = replace(volume, spacing=spacing, affine=default_affine(spacing), spacing_known=True)
    if fmt in ("nifti", "seg-nrrd"):
        check_nifti_grid(volume, out, "NIfTI output" if fmt == "nifti" else "Slicer segmentation output")
    if fmt == "dicom-seg" and refs is None:
        raise DataError(f"--format dicom-seg needs a DICOM series folder as INPUT, got {input_path}")
    # a series a SEG cannot be made of is refused before the model runs, not after
    seg_sources = seg_source_datasets(refs, progress=not quiet) if fmt == "dicom-seg" else None
    with Segmenter.load(bundle, backend=backend, threads=threads, tta=tta, timeout=timeout) as segmenter:
        if spacing is None and kind in ("npy", "image") and segmenter.postprocess.needs_spacing:
            # the unit spacing such inputs are read with would turn the mL into a wrong voxel count
            raise DataError(f"{input_path} carries no voxel spacing, and the bundle removes 3-D components by "
                            "volume (mL): give --spacing Z,Y,X in mm")
        labels = segmenter.predict_volume(volume, batch_size=batch_size, progress=not quiet)
        names, parameters, record = segmenter.labels, segmenter.algorithm_parameters(), provenance(segmenter)
        window = display_window(segmenter.spec.window)
        used = f"{segmenter.backend} ({segmenter.runner.device})"
    _write_outputs(labels, volume, out, fmt, overlay, label_tables, window, names,
                   dict(refs=refs, sources=seg_sources, parameters=parameters),
                   kind == "npy" and np.load(input_path, mmap_mode="r", allow_pickle=False).ndim == 2, record,
                   progress=not quiet)
    counts = label_counts(labels, minlength=max(names) + 1)
    voxels = " ".join(f"{names.get(k, k)}={int(counts[k])}" for k in sorted(names) if k > 0)
    click.echo(f"{volume.case_id}: {labels.shape[0]} slices, backend {used}, {time.perf_counter() - start:.2f} s, "
               f"voxels {voxels} -> {out}")


def _write_outputs(labels, volume, out, fmt, overlay, label_tables, window, names, seg, flat, record,
                   progress: bool) -> None:
    """Write --out, --overlay and each --label-table as one set (``atomic_set``): each is written
    beside its place first, and all land together once all are written, with Ctrl-C and SIGTERM
    held back while they are renamed, so a stop or a full disk leaves an earlier run's set as it
    was (or, a stop after the renames, this run's whole set), never this run's labels beside that
    run's overlay. ``flat``: an (H, W) array in gives an (H, W) label map out, as a slice does
    through the API. ``record``: the provenance each output holds; ``progress``: the NIfTI's
    slices counted on stderr as they are written."""
    from edgeseg.atomic_set import atomic_set
    from edgeseg.runtime.label_tables import write_label_table
    from edgeseg.runtime.writers import (write_dicom_seg, write_nifti, write_npy, write_overlay, write_png,
                                         write_png_slices, write_seg_nrrd)

    series = fmt == "png" and labels.shape[0] > 1  # a PNG per slice, in a folder
    with atomic_set([*([] if series else [out]), *filter(None, [overlay]), *label_tables],
                    folders=[out] if series else []) as staged:
        if overlay:
            write_overlay(labels, volume, staged[overlay], window, provenance=record)
        for table in label_tables:
            write_label_table(names, staged[table])
        if fmt == "nifti":
            write_nifti(labels, volume, staged[out], provenance=record, progress=progress, named=out)
        elif fmt == "seg-nrrd":
            write_seg_nrrd(labels, volume, names, staged[out], provenance=record, named=out)
        elif fmt == "dicom-seg":
            write_dicom_seg(labels, volume, seg["refs"], names, staged[out], sources=seg["sources"],
                            parameters=seg["parameters"], provenance=record)
        elif fmt == "npy":
            write_npy(labels[0] if flat else labels, staged[out])
        elif series:
            write_png_slices(labels, volume, staged[out], window, provenance=record)
        else:
            write_png(labels, volume, staged[out], window, provenance=record)


def _parse_spacing(text: str | None) -> tuple[float, float, float] | None:
    """--spacing Z,Y,X (mm, each finite and > 0), or None."""
    import math

    from edgeseg.errors import DataError

    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise DataError(f"--spacing must be three positive sizes in mm, Z,Y,X (e.g. 2.5,0.7,0.7), got {text!r}")
    return values


def _check_outputs(input_path: str, out: str, fmt: str, overlay: str | None, label_tables=()) -> None:
    """Refuse outputs that cannot be written (a path that cannot be written to, a writer's
    library not installed, a --label-table of no known kind), or that would overwrite the input
    or each other, before reading or segmenting anything.

    PNG output of a volume is a folder of slices, written whole: an existing folder is
    replaced only when it holds nothing but PNG files (an earlier prediction).
    """
    from pathlib import Path

    from edgeseg.atomic import check_output_file, check_output_folder, within
    from edgeseg.errors import DataError
    from edgeseg.runtime.label_tables import table_kind
    from edgeseg.runtime.writers import check_writer

    target = Path(out)
    source = Path(input_path)
    _check_apart(source, target, "--out", replaced_whole=fmt == "png" and target.is_dir())
    if overlay:
        _check_apart(source, Path(overlay), "--overlay")
        if _same(Path(overlay), target) or (fmt == "png" and within(Path(overlay), target)):
            raise DataError(f"--overlay {overlay} is where --out writes; name another file")
    if fmt == "png" and target.is_dir():
        others = [p.name for p in target.iterdir() if not p.name.lower().endswith(".png")]
        if others:
            raise DataError(f"--out {target} is a folder holding other files ({', '.join(sorted(others)[:3])}); "
                            f"PNG output replaces the folder whole, so name a new one")
        check_output_folder(target, "--out", staged=True)
    else:
        check_output_file(target, "--out")
    if overlay:
        check_output_file(overlay, "--overlay")
    taken = [target] + ([Path(overlay)] if overlay else [])
    for table in map(Path, label_tables):
        table_kind(table)
        _check_apart(source, table, "--label-table")
        if any(_same(table, other) for other in taken) or (fmt == "png" and within(table, target)):
            raise DataError(f"--label-table {table} is where another output of this run writes; name another file")
        check_output_file(table, "--label-table")
        taken.append(table)
    check_writer(fmt)
    if overlay:
        check_writer("png")


def _check_apart(source, target, option: str, replaced_whole: bool = False) -> None:
    """DataError when writing ``target`` would overwrite INPUT: the same file (also through a
    link), a file inside an INPUT series folder, or (``replaced_whole``: a folder written whole)
    a folder holding INPUT."""
    from edgeseg.atomic import within
    from edgeseg.errors import DataError

    if _same(target, source):
        raise DataError(f"{option} {target} is INPUT itself; name another file")
    if source.is_dir() and within(target, source):
        raise DataError(f"{option} {target} is inside the INPUT folder {source}; write outside the series")
    if replaced_whole and within(source, target):
        raise DataError(f"{option} {target} holds INPUT {source} and would be replaced whole; name a new folder")


def _same(a, b) -> bool:
    import os

    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()
