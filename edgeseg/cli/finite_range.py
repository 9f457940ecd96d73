"""A float option within a range that refuses NaN, which click's ``FloatRange`` lets through."""

from __future__ import annotations

import math

import click


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that fails on ``nan``: every comparison with NaN is false, so the
    range check passes it, and a duration of NaN seconds makes every deadline one never reached
    (a series never counts as complete, a SEG is never sent again)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return number
