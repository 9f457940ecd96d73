"""The version's one source, ES_VERSION_MAJOR/MINOR/PATCH in csrc/edgeseg.h, read from its text.

setup.py loads this file on its own, before the package can be imported, and writes the
version it reads into edgeseg/_version.py (generated, not in git), which ``import edgeseg``
reads; a checkout that setup.py has not run in yet reads the header through
:func:`checkout_version`. Neither path imports ``importlib.metadata`` (email, csv and zipfile
with it: tens of ms of every cold start), and both give the version of the code that runs,
not that of whichever edgeseg distribution is installed."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "edgeseg.h"


def header_version(header: Path) -> str:
    """"MAJOR.MINOR.PATCH" from an edgeseg.h; ValueError when its three lines are not there."""
    text = header.read_text()
    parts = [re.search(rf"^#define ES_VERSION_{part} (\d+)$", text, re.M) for part in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        raise ValueError(f"{header} has no ES_VERSION_MAJOR/MINOR/PATCH lines")
    return ".".join(match.group(1) for match in parts)


def checkout_version() -> str:
    """The version of a source checkout without edgeseg/_version.py, from its csrc/edgeseg.h."""
    try:
        return header_version(HEADER)
    except (OSError, ValueError) as exc:
        raise ImportError(f"edgeseg: error: no edgeseg/_version.py (setup.py writes it) and no version in {HEADER} "
                          f"({exc}); reinstall edgeseg") from None
