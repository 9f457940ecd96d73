"""Input size limits: every reader asks here before it allocates what a header claims.

A file's header says how much memory its pixels will take (NIfTI dims x dtype, an ``.npy``
header, PNG/JPEG dimensions, DICOM rows x columns x slices); a hostile or corrupt header can
claim terabytes. Readers compute that size first and call :func:`check_slice` and
:func:`check_volume`, which refuse anything above the limits with a one-line
:class:`~edgeseg.errors.DataError` naming the file, before a byte of pixels is read.

Defaults: 4096 x 4096 pixels per slice and 2 GiB per volume (counted as the float32 HU
array edgeseg holds). The environment variables ``EDGESEG_MAX_PIXELS`` and
``EDGESEG_MAX_VOLUME_BYTES`` override them (the CLI's ``--max-pixels`` and
``--max-volume-bytes`` set those variables, so worker processes inherit the same limits).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from edgeseg.errors import DataError

DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_VOLUME_BYTES = 2 << 30
PIXELS_ENV = "EDGESEG_MAX_PIXELS"
VOLUME_BYTES_ENV = "EDGESEG_MAX_VOLUME_BYTES"
# What a volume is counted as: the float32 HU array every reader produces.
HU_ITEMSIZE = 4


@dataclass(frozen=True)
class InputLimits:
    """The largest slice (pixels) and volume (bytes of float32 HU) edgeseg will read."""

    max_pixels: int
    max_volume_bytes: int


def env_int(name: str, default: int) -> int:
    """The positive integer in environment variable ``name``, ``default`` where it is unset or
    blank; anything else is a DataError naming the variable."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"environment variable {name} must be a positive integer, got {text!r}") from None
    if value < 1:
        raise DataError(f"environment variable {name} must be a positive integer, got {value}")
    return value


def current_limits() -> InputLimits:
    """The limits in force: the environment's overrides, else the documented defaults."""
    return InputLimits(env_int(PIXELS_ENV, DEFAULT_MAX_PIXELS), env_int(VOLUME_BYTES_ENV, DEFAULT_MAX_VOLUME_BYTES))


def set_limits(max_pixels: int | None = None, max_volume_bytes: int | None = None) -> None:
    """Override the limits for this process and the processes it starts (None keeps a limit)."""
    for name, value in ((PIXELS_ENV, max_pixels), (VOLUME_BYTES_ENV, max_volume_bytes)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{name} must be a positive integer, got {value!r}")
        os.environ[name] = str(value)


def _product(shape) -> int:
    total = 1
    for n in shape:
        total *= int(n)
    return total


def check_dims(shape, source: object, field: str) -> tuple[int, ...]:
    """``shape`` as ints, refusing negative or zero extents; ``field`` names where it was read."""
    dims = tuple(int(n) for n in shape)
    if any(n < 1 for n in dims):
        raise DataError(f"{source}: {field} {list(dims)} has an empty or negative extent")
    return dims


def check_slice(rows: int, columns: int, source: object) -> None:
    """Refuse a slice of more than the pixel limit, naming ``source`` and how to raise it."""
    limit = current_limits().max_pixels
    check_dims((rows, columns), source, "slice size")
    pixels = int(rows) * int(columns)
    if pixels > limit:
        raise DataError(f"{source}: a slice of {int(rows)}x{int(columns)} = {pixels} pixels is over the limit of "
                        f"{limit} (--max-pixels or {PIXELS_ENV})")


_watchers = threading.local()


@contextlib.contextmanager
def volume_sizes_to(watch: Callable[[int, object], None]) -> Iterator[None]:
    """Within the block, on this thread, every volume a reader sizes within the limits is passed
    to ``watch(bytes, source)`` before the reader allocates it; ``watch`` may raise to refuse it
    (a server charges the volume to its memory budget this way)."""
    previous = getattr(_watchers, "watch", None)
    _watchers.watch = watch
    try:
        yield
    finally:
        _watchers.watch = previous


def check_volume(shape, source: object) -> None:
    """Refuse a volume whose float32 HU array would exceed the byte limit (and its slices the pixel limit).

    ``shape`` is (slices, rows, columns) or any shape whose last two axes are one slice.
    """
    dims = check_dims(shape, source, "shape")
    if len(dims) >= 2:
        check_slice(dims[-2], dims[-1], source)
    limits = current_limits()
    size = _product(dims) * HU_ITEMSIZE
    if size > limits.max_volume_bytes:
        raise DataError(f"{source}: a volume of shape {list(dims)} takes {size} bytes as float32 HU, over the limit "
                        f"of {limits.max_volume_bytes} (--max-volume-bytes or {VOLUME_BYTES_ENV})")
    watch = getattr(_watchers, "watch", None)
    if watch is not None:
        watch(size, source)


def check_file_holds(source: object, field: str, claimed_bytes: int, available_bytes: int) -> None:
    """Refuse a header that claims more data than the file holds (a size lie or a truncated file)."""
    if claimed_bytes > available_bytes:
        raise DataError(f"{source}: {field} claims {claimed_bytes} bytes of pixel data but the file holds "
                        f"{max(available_bytes, 0)} (truncated, or a corrupt header)")


def configure_pillow(image_module) -> None:
    """Make Pillow's decompression-bomb limit edgeseg's pixel limit, so its warning never fires
    for an image edgeseg accepts and its error fires for one edgeseg would refuse anyway."""
    image_module.MAX_IMAGE_PIXELS = current_limits().max_pixels
