"""``--max-pixels`` / ``--max-volume-bytes``: the input size limits, for every command that reads data."""

from __future__ import annotations

import click

from edgeseg.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_VOLUME_BYTES, PIXELS_ENV, VOLUME_BYTES_ENV, set_limits


def _set_pixels(ctx, param, value):
    if value is not None:
        set_limits(max_pixels=value)
    return value


def _set_volume_bytes(ctx, param, value):
    if value is not None:
        set_limits(max_volume_bytes=value)
    return value


def input_limit_options(command):
    """Add the two limit options to a click command; they set the limits before the command runs."""
    command = click.option(
        "--max-volume-bytes", type=click.IntRange(min=1), default=None, expose_value=False, is_eager=True,
        callback=_set_volume_bytes,
        help=f"Largest volume read, in bytes of float32 HU (default {DEFAULT_MAX_VOLUME_BYTES}, or ${VOLUME_BYTES_ENV}).",
    )(command)
    return click.option(
        "--max-pixels", type=click.IntRange(min=1), default=None, expose_value=False, is_eager=True,
        callback=_set_pixels,
        help=f"Largest slice read, in pixels (default {DEFAULT_MAX_PIXELS} = 4096x4096, or ${PIXELS_ENV}).",
    )(command)
