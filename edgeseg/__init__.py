"""edgeseg: U-Net CT segmentation from training to a scanner-side device."""

from __future__ import annotations

import os
from importlib.metadata import version as _installed_version

# The installed distribution's version, which setup.py reads from csrc/edgeseg.h (its one source).
__version__ = _installed_version("edgeseg")

# ONNX Runtime's PyPI builds carry Microsoft's 1DS telemetry, on by default: it writes a device
# id under ~/.cache/Microsoft, a `.ses` file in TMPDIR, and tries to reach
# mobile.events.data.microsoft.com. A device next to a scanner must contact nothing it was not
# told to, and the library reads this variable once, when it is first imported, so it is set
# here, before any edgeseg module can import it; an operator's own value is kept
# (docs/provenance.md, "What edgeseg writes and contacts").
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from edgeseg.errors import EdgesegError  # noqa: E402
from edgeseg.spec import PreprocessSpec  # noqa: E402

__all__ = ["EdgesegError", "PreprocessSpec", "__version__"]
