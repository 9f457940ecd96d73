"""Reading a bundle's own files: each must be inside the bundle folder, and JSON ones are read
with a size limit.

A bundle is deployed as one folder, copied, archived or mounted as a whole; a file of it that is a
link to somewhere else (``model.onnx -> /shared/models/model.onnx``) would be loaded from wherever
the link points on each machine, and lost or swapped by whoever owns that place. The sha256 in the
manifest only says the bytes match today, so such a file is refused, by name, before it is read.
libedgeseg makes the same check with the same message (csrc/runtime/bundle_paths.c).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edgeseg.errors import BundleError

# libedgeseg's limit (MANIFEST_MAX_BYTES in csrc/runtime/manifest_text.c): a manifest is a few kB,
# and one padded with gigabytes of JSON whitespace would otherwise be read whole into memory
MANIFEST_MAX_BYTES = 64 << 20


def check_inside_bundle(folder: str | Path, name: str) -> None:
    """BundleError where ``folder/name`` exists and resolves (through links) to a file outside
    ``folder``; a missing file passes, for the caller's own check to name it as missing."""
    try:
        root = os.path.realpath(folder, strict=True)
        target = os.path.realpath(os.path.join(folder, name), strict=True)
    except (OSError, ValueError):
        return
    # "/" is the one resolved folder that already ends in a separator
    if not target.startswith(root.rstrip("/") + "/"):
        raise BundleError(f"bundle {folder}: {name} resolves to {target}, outside the bundle folder "
                          "(a bundle holds its own files, not links to others)")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_bundle_json_bytes(path: Path) -> bytes:
    """The bytes of a bundle's JSON file (``manifest.json``, ``parity.json``), read no further
    than :data:`MANIFEST_MAX_BYTES`; BundleError for one outside its bundle folder or longer,
    OSError for an unreadable one."""
    check_inside_bundle(path.parent, path.name)
    chunks, total = [], 0
    with open(path, "rb") as fh:
        # in steps: read(n) allocates n bytes before it reads, 64 MB for every bundle loaded
        while total <= MANIFEST_MAX_BYTES and (chunk := fh.read(1 << 20)):
            chunks.append(chunk)
            total += len(chunk)
    raw = b"".join(chunks)
    if len(raw) > MANIFEST_MAX_BYTES:
        raise BundleError(f"{path}: not a regular file of at most {MANIFEST_MAX_BYTES} bytes")
    return raw
