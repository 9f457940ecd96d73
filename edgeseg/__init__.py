"""edgeseg: U-Net CT segmentation from training to a scanner-side device."""

from __future__ import annotations

__version__ = "0.1.0"

from edgeseg.errors import EdgesegError  # noqa: E402
from edgeseg.spec import PreprocessSpec  # noqa: E402

__all__ = ["EdgesegError", "PreprocessSpec", "__version__"]
