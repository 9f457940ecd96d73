"""Synthetic abdominal CT phantom: a labelled dataset anyone can generate in a second.

The phantom is not meant to look real but to be a fair small task: the liver (the target) has
a per-case contrast that overlaps a spleen-like organ on the other side, so a model must use
position and shape, not intensity alone. Everything is drawn from one random generator seeded
by (seed, case id), so a case is reproducible on any machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from edgeseg.data.volume import Volume, default_affine
from edgeseg.errors import DataError, require
from edgeseg.limits import check_volume
from edgeseg.progress import progress_bar

PHANTOM_LABELS = {"liver": 1, "spine": 2, "kidney": 3}
PHANTOM_DATASET_NAME = "edgeseg-phantom"
AIR_HU = -1000.0
DEFAULT_SHAPE = (32, 128, 128)
DEFAULT_SPACING = (2.5, 1.5, 1.5)


def _case_rng(case_id: str, seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"phantom seed must be a non-negative integer, got {seed!r}")
    # Python's hash() is salted per process; a digest keeps cases identical across runs.
    digest = int.from_bytes(hashlib.sha256(case_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([int(seed), digest])


class _FloatDraws:
    """Random draws as Python floats: NumPy float64 scalars would promote float32 arrays."""

    def __init__(self, generator: np.random.Generator) -> None:
        self.generator = generator

    def uniform(self, low: float, high: float) -> float:
        return float(self.generator.uniform(low, high))

    def integers(self, low: int, high: int) -> int:
        return int(self.generator.integers(low, high))

    def normal(self, loc: float, scale: float, size) -> np.ndarray:
        return self.generator.normal(loc, scale, size=size).astype(np.float32)


def _canvas(shape: tuple[int, int, int]):
    """An air-filled HU volume, an empty label map, and ``paint(mask, value, label_value=0)``,
    which sets HU (a number, or an array broadcast to the volume) and the label under ``mask``."""
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)

    def paint(mask, value, label_value=0):
        hu[mask] = value if np.isscalar(value) else np.broadcast_to(value, shape)[mask]
        label[mask] = label_value

    return hu, label, paint


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised coordinates: u, v in [-1, 1] across x (to patient left) and y (posterior),
    w in [0, 1] from the lowest to the highest slice; broadcastable (1,1,X), (1,Y,1), (Z,1,1)."""
    nz, ny, nx = shape
    u = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2) / (nx / 2)).reshape(1, 1, nx)
    v = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) / (ny / 2)).reshape(1, ny, 1)
    w = (np.linspace(0.0, 1.0, nz, dtype=np.float32) if nz > 1 else np.full(1, 0.5, np.float32))
    return u, v, w.reshape(nz, 1, 1)


def _smooth_field(rng, u, v, w, amplitude: float, terms: int = 3) -> np.ndarray:
    """A random low-frequency field: a few products of 1-D sine waves, scaled to ``amplitude``.

    Products of per-axis waves cost one multiply per voxel, where a sine of a 3-D argument
    would dominate the phantom's run time.
    """
    field = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), dtype=np.float32)
    for _ in range(terms):
        wave_u, wave_v, wave_w = (
            np.sin(np.float32(np.pi * rng.uniform(0.3, 1.2)) * axis + np.float32(rng.uniform(0, 2 * np.pi)))
            for axis in (u, v, w)
        )
        field += wave_u * wave_v * wave_w
    return field * np.float32(amplitude / terms)


def _z_profile(w: np.ndarray, centre: float, half_height: float) -> np.ndarray:
    """Organ size along z: 1 at ``centre``, shrinking to 0 ``half_height`` away (absent beyond)."""
    return np.sqrt(np.clip(1.0 - ((w - centre) / half_height) ** 2, 0.0, 1.0))


def _ellipse(U, V, centre, radii, scale=1.0, angle=0.0) -> np.ndarray:
    cu, cv = centre
    du, dv = U - cu, V - cv
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        du, dv = c * du + s * dv, -s * du + c * dv
    return (du / radii[0]) ** 2 + (dv / radii[1]) ** 2 <= np.square(scale)


def _lobulated(rng, U, V, centre, radii, scale) -> np.ndarray:
    """An ellipse whose boundary wobbles with angle, so each liver has its own outline."""
    du, dv = (U - centre[0]) / radii[0], (V - centre[1]) / radii[1]
    theta = np.arctan2(dv, du)
    boundary = np.ones_like(theta)
    for k in (2, 3, 4):
        boundary += rng.uniform(0.0, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(du, dv) <= scale * boundary


def _soften(hu: np.ndarray) -> np.ndarray:
    """In-plane [1, 2, 1] / 4 blur: organ edges get the partial-volume ramp of a real scan."""
    padded = np.pad(hu, ((0, 0), (1, 1), (0, 0)), mode="edge")
    hu = 0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:]
    padded = np.pad(hu, ((0, 0), (0, 0), (1, 1)), mode="edge")
    return 0.25 * padded[:, :, :-2] + 0.5 * padded[:, :, 1:-1] + 0.25 * padded[:, :, 2:]


def _validate(shape, spacing) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or shape[0] < 1 or min(shape[1:]) < 16:
        raise DataError(f"phantom shape must be (slices >= 1, rows >= 16, cols >= 16), got {shape}")
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise DataError(f"phantom spacing must be three positive mm values, got {spacing}")
    check_volume(shape, f"phantom of shape {shape}")
    return shape, spacing  # type: ignore[return-value]


def synth_phantom(
    case_id: str,
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> Volume:
    """Generate one labelled abdominal CT phantom in HU, in the LPS display layout.

    Air outside an elliptical body with a fat rim; soft tissue inside; a liver on the
    patient's right (image left, low x) whose outline, size and position vary per case and
    along z (absent in some top and bottom slices); a spleen-like organ of liver-like HU on the
    other side; two enhanced kidneys and a vertebra posteriorly; an aorta and bowel gas. Labels
    follow :data:`PHANTOM_LABELS` (0 is background). The same (case_id, seed) always gives
    the same volume; HU are whole numbers, as a scanner stores them.
    """
    shape, spacing = _validate(shape, spacing)
    generator = _case_rng(case_id, seed)
    rng = _FloatDraws(generator)
    u, v, w = _grid(shape)
    U = u + _smooth_field(rng, u, v, w, 0.04)
    V = v + _smooth_field(rng, u, v, w, 0.04)
    hu, label, paint = _canvas(shape)

    # Body and fat rim.
    radii = (rng.uniform(0.78, 0.9), rng.uniform(0.66, 0.74))
    rim = rng.uniform(0.04, 0.08)
    body_centre = (0.0, rng.uniform(-0.03, 0.03))
    paint(_ellipse(U, V, body_centre, radii), rng.uniform(-115, -85))
    inner = _ellipse(U, V, body_centre, (radii[0] - rim, radii[1] - rim))
    paint(inner, rng.uniform(20, 40) + _smooth_field(rng, u, v, w, 8.0))

    for _ in range(rng.integers(2, 5)):  # bowel gas, anterior on the patient's left
        centre = (rng.uniform(0.0, 0.5), rng.uniform(-0.5, -0.15))
        extent = _z_profile(w, rng.uniform(0, 1), rng.uniform(0.2, 0.5))
        paint(inner & _ellipse(U, V, centre, (rng.uniform(0.04, 0.08),) * 2, extent), rng.uniform(-950, -700))

    liver_hu = rng.uniform(50, 120)
    # The half-height stays below the distance to either end, so the top and bottom slices
    # never hold liver.
    liver_centre_z, liver_half_height = rng.uniform(0.42, 0.58), rng.uniform(0.3, 0.4)
    liver_centre = (rng.uniform(-0.43, -0.33) + 0.08 * (w - liver_centre_z), rng.uniform(-0.13, -0.03))
    liver_radii = (rng.uniform(0.27, 0.34), rng.uniform(0.3, 0.38))
    liver = inner & _lobulated(rng, U, V, liver_centre, liver_radii,
                               _z_profile(w, liver_centre_z, liver_half_height))
    paint(liver, liver_hu + _smooth_field(rng, u, v, w, 6.0), PHANTOM_LABELS["liver"])

    spleen_extent = _z_profile(w, liver_centre_z + rng.uniform(0.0, 0.15), rng.uniform(0.25, 0.35))
    spleen = (rng.uniform(0.45, 0.55), rng.uniform(0.05, 0.2))
    paint(inner & _ellipse(U, V, spleen, (rng.uniform(0.1, 0.15), rng.uniform(0.17, 0.23)), spleen_extent,
                           angle=rng.uniform(-0.5, 0.0)), liver_hu + rng.uniform(-15, 15))

    paint(inner & _ellipse(U, V, (rng.uniform(0.05, 0.1), 0.18), (0.05, 0.05)), rng.uniform(150, 250))

    kidney_hu, kidney_z = rng.uniform(130, 180), rng.uniform(0.25, 0.4)
    for side in (-1, 1):  # the right kidney (side -1, image left) sits a little lower
        extent = _z_profile(w, kidney_z + (0.06 if side > 0 else 0.0), rng.uniform(0.22, 0.3))
        centre = (side * rng.uniform(0.28, 0.34), rng.uniform(0.27, 0.33))
        kidney = _ellipse(U, V, centre, (rng.uniform(0.09, 0.12), rng.uniform(0.14, 0.18)), extent,
                          angle=side * rng.uniform(0.2, 0.5))
        paint(inner & kidney, kidney_hu + rng.uniform(-10, 10), PHANTOM_LABELS["kidney"])

    # Vertebra: cortical shell, cancellous body, arch around the canal. Drawn on the undeformed
    # grid's x so the spine stays on the midline.
    spine_v = rng.uniform(0.33, 0.38)
    U_mid = u + 0.3 * (U - u)
    paint(_ellipse(U_mid, V, (0.0, spine_v), (0.11, 0.09)), rng.uniform(750, 900), PHANTOM_LABELS["spine"])
    paint(_ellipse(U_mid, V, (0.0, spine_v), (0.085, 0.065)), rng.uniform(400, 550), PHANTOM_LABELS["spine"])
    paint(_ellipse(U_mid, V, (0.0, spine_v + 0.14), (0.07, 0.07)), rng.uniform(550, 750), PHANTOM_LABELS["spine"])
    paint(_ellipse(U_mid, V, (0.0, spine_v + 0.14), (0.04, 0.04)), rng.uniform(0, 30))

    noise_sigma = rng.uniform(8, 25)
    hu = _soften(hu) + rng.normal(0.0, noise_sigma, size=shape)
    return Volume(
        hu=np.round(hu).astype(np.float32),
        spacing=spacing,
        affine=default_affine(spacing),
        case_id=case_id,
        label=label,
        source=f"phantom:seed={seed}",
    )


def phantom_geometry(size: int, slices: int) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape and spacing of a phantom with ``size`` x ``size`` pixels and ``slices`` slices.

    The pixel size scales so the field of view stays that of the default 128 x 1.5 mm grid,
    keeping anatomy the same size in mm whatever the resolution.
    """
    pixel = DEFAULT_SPACING[1] * DEFAULT_SHAPE[1] / int(size)
    return (int(slices), int(size), int(size)), (DEFAULT_SPACING[0], pixel, pixel)


PHANTOM_KINDS = ("abdomen", "chest")
# How a phantom dataset stores its images: NIfTI files in imagesTr/, or one DICOM CT series
# folder per case; the labels are NIfTI in labelsTr/ either way.
PHANTOM_FORMATS = ("nifti", "dicom")


def phantom_kind(kind: str):
    """``(synth function, {class name: label value}, description)`` of a phantom ``kind``."""
    if kind == "abdomen":
        return synth_phantom, PHANTOM_LABELS, "synthetic abdominal CT phantom generated by edgeseg"
    if kind == "chest":
        from edgeseg.data.chest_phantom import CHEST_LABELS, synth_chest_phantom

        return synth_chest_phantom, CHEST_LABELS, "synthetic chest CT phantom (lung infection) generated by edgeseg"
    raise DataError(f"unknown phantom kind {kind!r}; expected one of {', '.join(PHANTOM_KINDS)}")


def phantom_case_ids(cases: int) -> list[str]:
    """The case ids a phantom dataset of ``cases`` cases uses: case_000, case_001, ..."""
    if int(cases) < 1:
        raise DataError(f"a phantom dataset needs at least 1 case, got {cases}")
    return [f"case_{k:03d}" for k in range(int(cases))]


def _save_nifti(array_zyx: np.ndarray, affine: np.ndarray, path: Path) -> None:
    nib = require("nibabel", "io", "writing phantom NIfTI volumes")

    image = nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _save_image(volume: Volume, path: Path, image_format: str, description: str) -> None:
    """The case's HU as an int16 NIfTI file, or as a DICOM CT series in the folder ``path``."""
    if image_format == "nifti":
        path.parent.mkdir(exist_ok=True)
        _save_nifti(volume.hu.astype(np.int16), volume.affine, path)
        return
    from edgeseg.data.dicom_ct_writer import write_ct_series

    path.mkdir()
    write_ct_series(volume, path, description=description)


# What write_phantom_dataset puts in its folder: a folder holding anything else is not only a phantom.
_SYNTH_FILES = {"imagesTr": re.compile(r"case_\d{3,}\.nii\.gz"), "labelsTr": re.compile(r"case_\d{3,}\.nii\.gz")}
_SYNTH_CASE = re.compile(r"case_\d{3,}")
_SYNTH_SLICE = re.compile(r"IM\d{4,}\.dcm")


def _foreign_entry(out: Path) -> str | None:
    """The first entry of ``out`` (relative) that ``edgeseg data synth`` does not write, or None."""
    for item in sorted(out.iterdir()):
        if item.name == "dataset.json" and item.is_file() and not item.is_symlink():
            continue
        pattern = _SYNTH_FILES.get(item.name) or (_SYNTH_SLICE if _SYNTH_CASE.fullmatch(item.name) else None)
        if pattern is None or item.is_symlink() or not item.is_dir():
            return item.name
        for inner in sorted(item.iterdir()):
            if not pattern.fullmatch(inner.name) or inner.is_symlink() or not inner.is_file():
                return f"{item.name}/{inner.name}"
    return None


def _check_replaceable(out: Path) -> None:
    """Only an empty folder or an earlier phantom dataset holding nothing else may be replaced:
    the whole folder goes, so a run or notes kept in it would go with it."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    try:
        name = json.loads((out / "dataset.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    if name != PHANTOM_DATASET_NAME:
        raise DataError(f"output folder {out} is not empty and not a phantom dataset; refusing to replace it")
    foreign = _foreign_entry(out)
    if foreign is not None:
        raise DataError(f"output folder {out} holds {foreign}, which `edgeseg data synth` does not write; "
                        "refusing to replace it (move it out, or name another --out)")


def write_phantom_dataset(
    out: str | os.PathLike,
    cases: int,
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    progress: bool = False,
    kind: str = "abdomen",
    image_format: str = "nifti",
) -> Path:
    """Write ``cases`` phantoms as an MSD-layout dataset and return its folder.

    ``kind`` is ``"abdomen"`` (:func:`synth_phantom`, labels :data:`PHANTOM_LABELS`) or
    ``"chest"`` (:func:`~edgeseg.data.chest_phantom.synth_chest_phantom`, labels
    :data:`~edgeseg.data.chest_phantom.CHEST_LABELS`). Layout: ``imagesTr/case_000.nii.gz`` (int16 HU), ``labelsTr/case_000.nii.gz`` (uint8) and
    an MSD-style ``dataset.json``. ``image_format="dicom"`` writes each case's images as a DICOM
    CT series in ``case_000/`` instead (see :func:`~edgeseg.data.dicom_ct_writer.write_ct_series`),
    the labels staying in ``labelsTr/``, where the DICOM-tree reader of ``open_dataset`` finds
    them. The folder is built beside ``out`` and renamed into place,
    so readers never see half a dataset; an existing ``out`` is replaced only when it is empty
    or an earlier phantom dataset holding nothing this does not write.
    """
    from edgeseg.atomic import atomic_dir

    out = Path(out)
    synth, labels, description = phantom_kind(kind)
    case_ids = phantom_case_ids(cases)
    shape, spacing = _validate(shape, spacing)
    if image_format not in PHANTOM_FORMATS:
        raise DataError(f"unknown phantom image format {image_format!r}; expected one of {', '.join(PHANTOM_FORMATS)}")
    _check_replaceable(out)
    images = {"nifti": "./imagesTr/{}.nii.gz", "dicom": "./{}"}[image_format]
    with atomic_dir(out) as tmp:
        (tmp / "labelsTr").mkdir()
        for case_id in progress_bar(case_ids, desc="writing phantom", unit="case", shown=progress):
            volume = synth(case_id, seed, shape=shape, spacing=spacing)
            _save_image(volume, tmp / images.format(case_id), image_format, f"edgeseg {kind} phantom {case_id}")
            _save_nifti(volume.label, volume.affine, tmp / "labelsTr" / f"{case_id}.nii.gz")
        manifest = {
            "name": PHANTOM_DATASET_NAME,
            "description": description,
            "reference": "edgeseg.data.phantom",
            "licence": "CC0-1.0",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {"0": "background", **{str(v): k for k, v in labels.items()}},
            "numTraining": len(case_ids),
            "numTest": 0,
            "training": [{"image": images.format(c), "label": f"./labelsTr/{c}.nii.gz"} for c in case_ids],
            "test": [],
            "edgeseg": {"seed": int(seed), "shape": list(shape), "spacing": list(spacing), "kind": kind,
                        **({"format": "dicom"} if image_format == "dicom" else {})},
        }
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
