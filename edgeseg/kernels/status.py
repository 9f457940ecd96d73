"""Turn a C status code into the exception the Python API promises."""

from __future__ import annotations

from edgeseg.errors import DataError
from edgeseg.kernels import _kernels

OK, EINVAL, ENOMEM, ENONFINITE = 0, 1, 2, 3


def raise_for_status(rc: int, what: str, nonfinite_detail: str = "") -> None:
    """Raise for a non-zero kernel status; ``what`` names the operation in the message."""
    if rc == OK:
        return
    if rc == ENONFINITE:
        raise DataError(f"{what}: {nonfinite_detail or _kernels.status_message(rc)}")
    if rc == ENOMEM:
        raise MemoryError(f"{what}: the C kernel could not allocate its work buffers")
    # The Python layer validates every argument first, so EINVAL here is an edgeseg bug.
    raise RuntimeError(f"{what}: C kernel rejected its arguments ({_kernels.status_message(rc)})")
