"""Synthetic chest CT phantom with lung-infection labels: ground-glass opacity and consolidation.

The task it poses is the COVID-19 one in miniature: lesions that are small, multi-focal and
low-contrast, of two classes told apart by density (ground-glass -600..-300 HU, consolidation
-100..50 HU, the latter overlapping the vessels that cross the lungs), random in number and
size per case, and absent from many slices. Labels follow :data:`CHEST_LABELS` (0 is
background); everything is drawn from one generator seeded by (seed, case id), as for the
abdominal phantom, whose grid and drawing primitives this module shares.
"""

from __future__ import annotations

import numpy as np

from edgeseg.data.phantom import (
    _canvas,
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    _case_rng,
    _ellipse,
    _FloatDraws,
    _grid,
    _smooth_field,
    _soften,
    _validate,
    _z_profile,
)
from edgeseg.data.volume import Volume, default_affine

CHEST_LABELS = {"ggo": 1, "consolidation": 2}
GGO_HU = (-600.0, -300.0)
CONSOLIDATION_HU = (-100.0, 50.0)
# Lesions are centred away from both ends of the volume and are never taller than this
# (in normalised z), so the first and last slices of a case are always lesion-free.
LESION_MAX_HALF_HEIGHT = 0.18
LESION_Z_RANGE = (0.25, 0.75)


def _lesions(rng, U, V, w, lung_centre, lung_radii, count: int) -> list[np.ndarray]:
    """``count`` blob masks centred inside one lung, each with its own size and z-extent."""
    blobs = []
    for _ in range(count):
        # A point inside the lung ellipse (radius fraction below 0.7 keeps most of the blob in).
        angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.7)
        centre = (lung_centre[0] + reach * lung_radii[0] * np.cos(angle),
                  lung_centre[1] + reach * lung_radii[1] * np.sin(angle))
        extent = _z_profile(w, rng.uniform(*LESION_Z_RANGE), rng.uniform(0.06, LESION_MAX_HALF_HEIGHT))
        radii = (rng.uniform(0.04, 0.13), rng.uniform(0.04, 0.13))
        blobs.append(_ellipse(U, V, centre, radii, extent, angle=rng.uniform(0, np.pi)))
    return blobs


def synth_chest_phantom(
    case_id: str,
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> Volume:
    """Generate one labelled chest CT phantom in HU, in the LPS display layout.

    Air outside an elliptical body with a fat rim and soft tissue; two lungs of air-like HU
    (-900..-800) either side of a mediastinum and heart; vessels of blood HU crossing the
    lungs; a vertebra posteriorly. Inside the lungs, 0..4 ground-glass patches per lung
    (-600..-300 HU, label 1) and 0..2 consolidations per lung (-100..50 HU, label 2; drawn last,
    so a consolidation inside a ground-glass patch keeps its own label), each with a random
    size and z-extent; the end slices never hold a lesion. The same (case_id, seed) always
    gives the same volume; HU are whole numbers.
    """
    shape, spacing = _validate(shape, spacing)
    rng = _FloatDraws(_case_rng(case_id, seed))
    u, v, w = _grid(shape)
    U = u + _smooth_field(rng, u, v, w, 0.03)
    V = v + _smooth_field(rng, u, v, w, 0.03)
    hu, label, paint = _canvas(shape)

    radii = (rng.uniform(0.85, 0.93), rng.uniform(0.62, 0.7))
    rim = rng.uniform(0.04, 0.07)
    paint(_ellipse(U, V, (0.0, 0.0), radii), rng.uniform(-115, -85))
    inner = _ellipse(U, V, (0.0, 0.0), (radii[0] - rim, radii[1] - rim))
    paint(inner, rng.uniform(20, 45) + _smooth_field(rng, u, v, w, 8.0))

    lung_hu = rng.uniform(-900, -800)
    lungs = []
    for side in (-1, 1):  # the right lung (side -1, image left) is the larger one
        centre = (side * rng.uniform(0.36, 0.42), rng.uniform(-0.05, 0.03))
        lung_radii = (rng.uniform(0.24, 0.3) * (1.08 if side < 0 else 1.0), rng.uniform(0.4, 0.48))
        lung = inner & _ellipse(U, V, centre, lung_radii, _z_profile(w, 0.5, 0.75))
        paint(lung, lung_hu + _smooth_field(rng, u, v, w, 15.0))
        lungs.append((lung, centre, lung_radii))
    paint(inner & _ellipse(U, V, (0.05, -0.05), (0.2, 0.22)), rng.uniform(35, 55))  # heart

    blood_hu = rng.uniform(30, 80)
    for lung, centre, lung_radii in lungs:
        for _ in range(rng.integers(6, 12)):  # vessels: thin blobs running along z
            offset = (rng.uniform(-0.8, 0.8) * lung_radii[0], rng.uniform(-0.8, 0.8) * lung_radii[1])
            vessel = _ellipse(U, V, (centre[0] + offset[0], centre[1] + offset[1]), (rng.uniform(0.01, 0.025),) * 2,
                              _z_profile(w, rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.6)))
            paint(lung & vessel, blood_hu)

    spine_v = rng.uniform(0.45, 0.5)
    paint(_ellipse(u, V, (0.0, spine_v), (0.1, 0.08)), rng.uniform(600, 800))
    paint(_ellipse(u, V, (0.0, spine_v), (0.075, 0.055)), rng.uniform(300, 450))

    lesions = {"ggo": [], "consolidation": []}
    for lung, centre, lung_radii in lungs:
        lesions["ggo"] += [lung & m for m in _lesions(rng, U, V, w, centre, lung_radii, rng.integers(0, 5))]
        lesions["consolidation"] += [lung & m for m in _lesions(rng, U, V, w, centre, lung_radii, rng.integers(0, 3))]
    for mask in lesions["ggo"]:
        paint(mask, rng.uniform(*GGO_HU) + _smooth_field(rng, u, v, w, 25.0), CHEST_LABELS["ggo"])
    for mask in lesions["consolidation"]:
        paint(mask, rng.uniform(*CONSOLIDATION_HU) + _smooth_field(rng, u, v, w, 15.0), CHEST_LABELS["consolidation"])

    hu = _soften(hu) + rng.normal(0.0, rng.uniform(8, 25), size=shape)
    return Volume(
        hu=np.round(hu).astype(np.float32),
        spacing=spacing,
        affine=default_affine(spacing),
        case_id=case_id,
        label=label,
        source=f"chest-phantom:seed={seed}",
    )
