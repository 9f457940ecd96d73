"""Which of a NIfTI header's two transforms places its voxels: the sform or the qform.

A NIfTI header may hold both. The sform (``srow_x/y/z``, used where ``sform_code`` > 0) is the
one nibabel and most readers prefer; the qform (a rotation, the voxel sizes ``pixdim`` and an
offset, used where ``qform_code`` > 0) is the fallback. An sform that places no volume (its
voxel axes singular or not finite: a tool that wrote zeros or NaN there) or gives a voxel size
below 1e-6 mm is passed over for a usable qform, with one warning naming both codes, as ITK-based
readers fall back to the qform where the sform is unusable; where neither transform is usable the
refusal names the field(s).

A qform's voxel sizes are read from the file's own ``pixdim`` bytes: nibabel makes a stored 0 a
1 mm step and a negative one its absolute value as it loads a header (niftilib takes 1 mm for
both), so a qform with such a step would be read as one no writer gave. A stored voxel size
below 1e-6 mm makes the qform unusable, as a voxel axis below 1e-6 mm does either transform.
"""

from __future__ import annotations

import logging

import numpy as np

from edgeseg.data.grid import spacing_from_affine
from edgeseg.errors import DataError

log = logging.getLogger(__name__)

# voxel axes whose volume is this small a part of their lengths' product are taken as coplanar
_SINGULAR = 1e-6


def _problem(affine: np.ndarray) -> str | None:
    """Why ``affine`` places no volume of voxels, or None where it does."""
    if not np.isfinite(affine).all():
        return "is not finite"
    axes = affine[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if not lengths.all() or abs(np.linalg.det(axes)) <= _SINGULAR * float(np.prod(lengths)):
        return f"is singular (voxel axes {np.round(axes.T, 4).tolist()} span no volume)"
    try:
        spacing_from_affine(affine)
    except DataError:  # a 1e-30 mm axis: not singular, yet a voxel size reported, and divided by, as 0
        return f"gives a voxel size below 1e-6 mm (voxel axes of {', '.join(f'{v:.3g}' for v in lengths)} mm)"
    return None


def _stored_pixdim_problem(image, path) -> str | None:
    """Why the voxel sizes stored in the header of the NIfTI file ``path`` (``image``, as nibabel
    loaded it) leave its qform unusable, or None: read from the file's bytes, as nibabel has
    already replaced a 0 or negative ``pixdim`` in ``image.header``."""
    from nibabel.openers import ImageOpener

    header = image.header
    with ImageOpener(str(path), "rb") as handle:
        stored = type(header)(handle.read(header.sizeof_hdr), check=False)["pixdim"]
    for axis in (1, 2, 3):
        size = float(stored[axis])
        if not round(size, 6) > 0:  # spacing_from_affine's threshold; NaN too
            return f"stores pixdim[{axis}] {size:g}, not a voxel size of at least 1e-6 mm"
    return None


def _transform(header, field: str, stored_problem: str | None = None) -> tuple[np.ndarray | None, str | None]:
    """The header's ``field`` ("sform" or "qform") where its code is over 0, else None; and why it
    is unusable (``stored_problem``, where given, first), or None."""
    if int(header[f"{field}_code"]) <= 0:
        return None, None
    if stored_problem is not None:
        return np.full((4, 4), np.nan), stored_problem
    try:
        matrix = np.asarray(header.get_sform() if field == "sform" else header.get_qform(), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - nibabel's error for a quaternion it cannot turn into a rotation
        return np.full((4, 4), np.nan), f"cannot be computed ({' '.join(str(exc).split())})"
    return matrix, _problem(matrix)


def header_affine(image, source: object, path, warn: bool = True) -> np.ndarray:
    """The voxel-to-RAS affine of a nibabel NIfTI ``image`` loaded from ``path``: its sform where
    ``sform_code`` > 0 and the sform is usable, else its qform where ``qform_code`` > 0 and
    usable (one warning, when ``warn``, where an sform was passed over). DataError, naming
    ``source`` and the field(s) and code(s), where neither is usable or both codes are 0."""
    header = image.header
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    sform, sform_problem = _transform(header, "sform")
    qform, qform_problem = _transform(header, "qform", _stored_pixdim_problem(image, path) if qform_code > 0 else None)
    if sform is None and qform is None:
        # Without either transform NIfTI defines no orientation; nibabel falls back to x flipped
        # (LAS), other readers to other layouts, so the model could see the patient mirrored.
        raise DataError(f"{source}: header fields qform_code and sform_code are both 0, so the file does not "
                        "say how its voxels lie in the patient; set its qform or sform")
    if sform is not None and sform_problem is None:
        return sform
    if qform is not None and qform_problem is None:
        if sform is not None and warn:
            log.warning("%s: header field sform (sform_code %d) %s; its voxels are placed by the qform "
                        "(qform_code %d) instead", source, sform_code, sform_problem, qform_code)
        return qform
    said = []
    if sform is not None:
        said.append(f"sform (sform_code {sform_code}) {sform_problem}")
    if qform is not None:
        said.append(f"qform (qform_code {qform_code}) {qform_problem}")
    unset = "" if len(said) == 2 else f", and {'qform_code' if sform is not None else 'sform_code'} is 0"
    raise DataError(f"{source}: header field{'s' if len(said) == 2 else ''} {' and '.join(said)}{unset}, so the "
                    "file does not say how its voxels lie in the patient; set a usable sform or qform")


def sform_passed_over(header) -> bool:
    """Whether :func:`header_affine` reads ``header`` by its qform although ``sform_code`` > 0."""
    (sform, sform_problem), (qform, qform_problem) = _transform(header, "sform"), _transform(header, "qform")
    return sform is not None and sform_problem is not None and qform is not None and qform_problem is None
