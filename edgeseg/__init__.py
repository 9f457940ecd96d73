"""edgeseg: U-Net CT segmentation from training to a scanner-side device."""

from __future__ import annotations

import os

# The version's one source is csrc/edgeseg.h: setup.py writes it into edgeseg/_version.py, and
# a checkout setup.py has not run in reads the header (edgeseg/_version_header.py).
try:
    from edgeseg._version import __version__
except ImportError:
    from edgeseg._version_header import checkout_version

    __version__ = checkout_version()

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
