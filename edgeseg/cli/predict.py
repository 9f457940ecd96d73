"""``edgeseg predict``: segment a DICOM series, NIfTI volume, PNG/JPG slice or NPY array with a bundle.

Only click is imported at start; the runtime and the reader for the input's format load when
the command runs, so a prediction never pays for torch, scipy or matplotlib.
"""

from __future__ import annotations

import click

from edgeseg.cli.input_limits import input_limit_options
from edgeseg.cli.tta_option import tta_option


@click.command("predict")
@input_limit_options
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Output file (or folder for PNGs of a volume).")
@click.option("--format", "fmt", type=click.Choice(["nifti", "dicom-seg", "png", "npy"]), default=None,
              help="Output format (default: from the --out suffix: .nii.gz, .dcm, .png, .npy).")
@click.option("--backend", default="auto", show_default=True,
              help="auto, or a backend name (onnxruntime, openvino, tensorrt, onnxruntime-gpu, torchscript), "
                   "optionally with :fp32 / :fp16 / :int8; comma-separate to give a fallback order; or a "
                   "KServe v2 model address http://HOST:PORT/models/NAME (edgeseg serve, Triton) to run the "
                   "network there.")
@click.option("--threads", default=0, show_default=True, help="CPU threads for the backend (0: its default).")
@click.option("--batch-size", default=None, type=int, help="Slices per model call (default: the bundle's, at most 8).")
@click.option("--overlay", default=None, type=click.Path(dir_okay=False),
              help="Also write one overlay PNG of the slice with the most foreground.")
@click.option("--intensity", default=None,
              help="What PNG/JPG pixels mean: 'hu-clipped:LO,HI' or 'window:LO,HI' [default: what the bundle's "
                   "training slices meant, as its manifest records; else hu-clipped:0,255].")
@tta_option
@click.option("--quiet", is_flag=True, help="No progress bar and no log lines.")
def command(bundle, input_path, out, fmt, backend, threads, batch_size, overlay, intensity, tta, quiet) -> None:
    """Segment INPUT with BUNDLE and write the label map to --out; prints a one-line summary."""
    import logging
    import time

    import numpy as np

    from edgeseg.cli.logs import configure_logging
    from edgeseg.errors import DataError, EdgesegError
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.readers import IMAGE_SUFFIXES, bundle_intensity, read_input
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.runtime.writers import format_for, write_dicom_seg, write_nifti, write_npy, write_overlay, write_png

    start = time.perf_counter()
    if not quiet:
        configure_logging()
    fmt = format_for(out, fmt)
    _check_outputs(out, fmt, overlay)
    if intensity is None and str(input_path).lower().endswith(IMAGE_SUFFIXES):
        try:
            intensity, recorded = bundle_intensity(read_manifest(bundle).source)
        except EdgesegError:  # the input is checked first; loading the bundle then says what is wrong
            intensity, recorded = None, False
        if recorded:
            logging.getLogger("edgeseg.predict").info(
                "reading %s's pixels as %s, the intensity of the bundle's training slices", input_path, intensity)
    volume, refs = read_input(input_path, **({"intensity": intensity} if intensity else {}))
    if fmt == "dicom-seg" and refs is None:
        raise DataError(f"--format dicom-seg needs a DICOM series folder as INPUT, got {input_path}")
    backends = backend.split(",") if "," in backend else backend
    with Segmenter.load(bundle, backend=backends, threads=threads, tta=tta) as segmenter:
        labels = segmenter.predict_volume(volume, batch_size=batch_size, progress=not quiet)
        names = segmenter.labels
        used = f"{segmenter.backend} ({segmenter.runner.device})"
    if fmt == "nifti":
        write_nifti(labels, volume, out)
    elif fmt == "dicom-seg":
        write_dicom_seg(labels, volume, refs, names, out)
    elif fmt == "png":
        write_png(labels, volume, out)
    else:
        write_npy(labels, out)
    if overlay:
        write_overlay(labels, volume, overlay)
    counts = np.bincount(labels.ravel(), minlength=max(names) + 1)
    voxels = " ".join(f"{names.get(k, k)}={int(counts[k])}" for k in sorted(names) if k > 0)
    click.echo(f"{volume.case_id}: {labels.shape[0]} slices, backend {used}, {time.perf_counter() - start:.2f} s, "
               f"voxels {voxels} -> {out}")


def _check_outputs(out: str, fmt: str, overlay: str | None) -> None:
    """Refuse outputs that cannot be written before reading or segmenting anything.

    PNG output of a volume is a folder of slices, written whole: an existing folder is
    replaced only when it holds nothing but PNG files (an earlier prediction).
    """
    from pathlib import Path

    from edgeseg.atomic import check_output_file, check_output_folder
    from edgeseg.errors import DataError

    target = Path(out)
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
