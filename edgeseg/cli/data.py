"""``edgeseg data``: make a phantom dataset, or describe any data source case by case."""

from __future__ import annotations

import click
import numpy as np

from edgeseg.atomic import check_output_folder
from edgeseg.cli.input_limits import input_limit_options
from edgeseg.cli.quiet_option import quiet_option


@click.group("data")
def command() -> None:
    """Make and inspect CT datasets."""


@command.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder to write.")
@click.option("--cases", default=10, show_default=True, type=click.IntRange(min=1), help="Number of cases.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Random seed.")
@click.option("--size", default=128, show_default=True, type=click.IntRange(min=16),
              help="Rows and columns per slice.")
@click.option("--slices", default=32, show_default=True, type=click.IntRange(min=1), help="Slices per case.")
@click.option("--kind", type=click.Choice(["abdomen", "chest"], case_sensitive=False), default="abdomen", show_default=True,
              help="abdomen: liver, spine, kidneys; chest: lung infection (ggo=1, consolidation=2).")
@click.option("--format", "image_format", type=click.Choice(["nifti", "dicom"], case_sensitive=False), default="nifti", show_default=True,
              help="Images as NIfTI (imagesTr/CASE.nii.gz) or as one DICOM CT series folder per case (CASE/); "
                   "labels are NIfTI in labelsTr/ either way.")
@quiet_option
def synth(out: str, cases: int, seed: int, size: int, slices: int, kind: str, image_format: str, quiet: bool) -> None:
    """Write a synthetic labelled CT phantom dataset (MSD layout: imagesTr/, labelsTr/; or DICOM series)."""
    from edgeseg.data.phantom import phantom_geometry, phantom_kind, write_phantom_dataset

    check_output_folder(out, "--out")
    shape, spacing = phantom_geometry(size, slices)
    folder = write_phantom_dataset(out, cases, seed, shape=shape, spacing=spacing, progress=not quiet, kind=kind,
                                   image_format=image_format)
    labels = " ".join(f"{name}={value}" for name, value in phantom_kind(kind)[1].items())
    stored = " as DICOM CT series (one folder per case, labels in labelsTr/)" if image_format == "dicom" else ""
    click.echo(
        f"wrote {cases} {'chest ' if kind == 'chest' else ''}phantom cases of {'x'.join(map(str, shape))} voxels "
        f"({spacing[0]:g} x {spacing[1]:g} x {spacing[2]:g} mm, seed {seed}, labels {labels}){stored} to {folder}"
    )


def _label_counts(label: np.ndarray | None, names: dict[int, str] | None = None) -> str:
    """``value:voxels`` per label value present, ``value=name:voxels`` where the label file names
    its segments (the name, not the value, then says the class)."""
    if label is None:
        return "-"
    from edgeseg.data.volume import label_counts

    counts = label_counts(label)
    names = names or {}
    parts = [f"{value}{'=' + names[value] if value in names else ''}:{int(n)}"
             for value, n in enumerate(counts) if value > 0 and n > 0]
    return " ".join(parts) or "none"


def describe_volumes(volumes: list) -> str:
    """A plain-text table, one row per case: shape, spacing, HU min / mean / max, label voxels."""
    header = ("case", "shape (z,y,x)", "spacing mm", "HU min", "HU mean", "HU max", "label voxels")
    rows = [header]
    for volume in volumes:
        hu = volume.hu
        rows.append((
            volume.case_id,
            "x".join(str(n) for n in hu.shape),
            "x".join(f"{s:.3g}" for s in volume.spacing),
            f"{float(hu.min()):.0f}",
            f"{float(hu.mean(dtype=np.float64)):.1f}",
            f"{float(hu.max()):.0f}",
            _label_counts(volume.label, volume.label_names),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append(f"{len(volumes)} case{'s' if len(volumes) != 1 else ''}")
    return "\n".join(lines)


@command.command("info")
@input_limit_options
@click.argument("source")
@click.option("--intensity", default=None, help="Slice folders: 'hu-clipped:LO,HI' or 'window:LO,HI'.")
@click.option("--mask-threshold", default=127, show_default=True, type=click.IntRange(0, 254),
              help="Slice folders: mask channel 0 above this is label 1.")
@click.option("--case-pattern", default=None,
              help="Slice folders: regex with (?P<case>) and (?P<slice>) groups, or 'file' for one case per file.")
@click.option("--mask", type=click.Choice(["auto", "binary", "labels"], case_sensitive=False), default="auto", show_default=True,
              help="Slice folders: masks are binary 0/255, label maps (values are classes), or detected.")
@click.option("--labels", default=None,
              help="Classes from source label values, e.g. 'ggo=1,consolidation=2'; a mask value outside them is refused.")
@click.option("--label-file", default=None, type=click.Path(dir_okay=False),
              help="Label map (NIfTI, NRRD or DICOM SEG) for a single-volume SOURCE.")
@quiet_option
def info(source: str, intensity: str | None, mask_threshold: int, case_pattern: str | None, mask: str,
         labels: str | None, label_file: str | None, quiet: bool) -> None:
    """Describe SOURCE (a folder, a NIfTI file, or a phantom spec) case by case."""
    from pathlib import Path

    from edgeseg.data.open import check_source, detect_layout, open_dataset
    from edgeseg.data.slice_masks import describe_mask_values
    from edgeseg.data.slices import DEFAULT_CASE_PATTERN, DEFAULT_INTENSITY, read_slice_folder_with_kind
    from edgeseg.train.config import parse_labels

    values = sorted({v for vals in parse_labels(labels).values() for v in vals}) if labels else None
    path = Path(check_source(source, "SOURCE"))
    if path.is_dir() and label_file is None and detect_layout(path) == "slices":
        volumes, kind = read_slice_folder_with_kind(
            path, intensity or DEFAULT_INTENSITY, mask_threshold, case_pattern or DEFAULT_CASE_PATTERN,
            progress=not quiet, mask=mask, label_values=values)
        found = describe_mask_values(v.label for v in volumes)
        what = {"binary": f"binary (channel 0 > {mask_threshold} is label 1)", "labels": "label maps"}.get(kind, "none")
        click.echo(describe_volumes(volumes))
        click.echo(f"masks: {what}; label values {', '.join(map(str, found)) or '-'}")
        return
    if label_file is None and _several_volumes(path):
        from dataclasses import replace

        from edgeseg.data.dicom import read_dicom_volumes

        parts = [(part, replace(volume, case_id=f"{volume.case_id} volume {part.number}"))
                 for part, volume, _ in read_dicom_volumes(path)]
        click.echo(describe_volumes([volume for _, volume in parts]))
        click.echo(f"{len(parts)} volumes in one series (predict --volume K): "
                   + "; ".join(part.describe() for part, _ in parts))
        return
    volumes = open_dataset(source, intensity=intensity, mask_threshold=mask_threshold, case_pattern=case_pattern,
                           label_file=label_file, progress=not quiet, mask=mask, label_values=values)
    click.echo(describe_volumes(volumes))


def _several_volumes(path) -> bool:
    """True for one DICOM series (a folder of it, or an Enhanced CT file) holding several volumes
    (edgeseg.data.dicom_volumes), which ``data info`` lists one by one."""
    from edgeseg.data.dicom_magic import looks_like_dicom
    from edgeseg.data.open import detect_layout

    if not (path.is_dir() and detect_layout(path) == "dicom" or path.is_file() and looks_like_dicom(path)):
        return False
    from edgeseg.data import dicom_volumes
    from edgeseg.data.dicom import series_volumes

    # The series is read again to be described: its warnings (localizers left out) are said then, once.
    was, dicom_volumes.log.disabled = dicom_volumes.log.disabled, True
    try:
        return len(series_volumes(path)) > 1
    finally:
        dicom_volumes.log.disabled = was
