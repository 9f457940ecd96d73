"""Pre- and post-processing kernels: C via Cython, with a numpy reference (``reference``)."""

from __future__ import annotations
