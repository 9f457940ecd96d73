"""Provenance: which bundle, artifact, backend and edgeseg made a result, recorded in every output.

One record (:func:`provenance`) is written, in the form each format has room for, into every
label map edgeseg writes: a NIfTI header extension and ``descrip``, a ``.seg.nrrd`` header field,
a PNG text chunk, a DICOM SEG's Algorithm Parameters and Content Description, the KServe v2
response parameters and the audit log. It names software and model only, never the input (a
file name or a case id can carry a patient's name), so it holds nothing about the patient.
"""

from __future__ import annotations

import contextlib
import json
import weakref

from edgeseg import __version__
from edgeseg.runtime.machine import installed_versions

#: the key under which the record is stored where a format takes named text (NRRD, PNG)
PROVENANCE_KEY = "edgeseg_provenance"
NIFTI_DESCRIP_BYTES = 80  # the NIfTI-1 header's descrip field, NUL-terminated when shorter
_MANIFEST = " manifest "  # before the manifest's sha256 in the short description
# runner -> its library's installed version, read once per runner: the server puts the record in
# every response, and reading it means scanning every folder on sys.path
_LIBRARY_VERSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def provenance(segmenter) -> dict[str, str]:
    """The record of what made ``segmenter``'s labels, every value a string (empty values left
    out): ``software`` and ``software_version`` (this edgeseg), ``architecture`` (the model's),
    ``manifest_sha256`` (of the bundle's ``manifest.json``, which lists every artifact's sha256),
    ``bundle_created`` and ``bundle_edgeseg_version`` (the export), ``checkpoint_sha256``,
    ``artifact`` and ``artifact_sha256`` (the model file run), ``backend`` with its ``precision``,
    ``device`` and ``backend_version`` (its library's), and ``tta``. A remote runner adds what its
    server says it ran, each key of ``edgeseg.runtime.runners.remote.SERVER_KEYS`` as
    ``server_KEY`` (``server_artifact_sha256``, ``server_backend``, ...)."""
    runner = segmenter.runner
    found = {"software": "edgeseg", "software_version": __version__}
    manifest = segmenter.manifest
    if manifest is not None:
        found.update(architecture=manifest.model.get("name", ""), manifest_sha256=manifest.sha256,
                     bundle_created=manifest.created, bundle_edgeseg_version=manifest.edgeseg_version,
                     checkpoint_sha256=manifest.source.get("sha256", ""))
        # a bundle file only: a remote runner's artifact is a URL, not the model's to publish
        entry = next((a for a in manifest.artifacts if a.file == runner.artifact), None)
        if entry is not None:
            found.update(artifact=entry.file, artifact_sha256=entry.sha256)
    found.update(backend=runner.name, precision=runner.precision, device=runner.device,
                 backend_version=library_version(runner), tta=segmenter.tta)
    found.update({f"server_{key}": value for key, value in getattr(runner, "served", {}).items()})
    return {name: str(value) for name, value in found.items() if value not in (None, "")}


def library_version(runner) -> str:
    """The version the engine itself reports where the runner holds one (``engine_version``:
    OpenVINO's build string, as the C API records it), else the installed version of ``runner``'s
    library, read from the distributions it names (not from the imported module: the OpenVINO
    runner loads only OpenVINO's bindings, which carry no ``__version__``); empty for a runner
    without a library. Read once per runner: the library a process has loaded does not change
    under it (a reinstall meanwhile changes what is on disk, not what runs)."""
    own = getattr(runner, "engine_version", "")
    if own:
        return str(own)
    with contextlib.suppress(KeyError, TypeError):  # not read yet, or a runner that takes no weak reference
        return _LIBRARY_VERSIONS[runner]
    names = type(runner).library_distributions()
    found = installed_versions(names) if names else {}
    version = next((found[name] for name in names if name in found), "")
    with contextlib.suppress(TypeError):
        _LIBRARY_VERSIONS[runner] = version
    return version


def provenance_json(record: dict[str, str]) -> str:
    """``record`` as one line of JSON (ASCII, keys in the record's order)."""
    return json.dumps(record, separators=(",", ":"))


def short_description(record: dict[str, str], limit: int = NIFTI_DESCRIP_BYTES - 1) -> str:
    """A one-line summary of ``record`` of at most ``limit`` ASCII bytes, for fields as short as
    NIfTI's ``descrip``: software and version, model, backend:precision, and as much of the
    manifest's sha256 as fits (the full record is in the file's extension)."""
    head = " ".join(filter(None, (f"{record.get('software', 'edgeseg')} {record.get('software_version', '')}".strip(),
                                  record.get("architecture"),
                                  f"{record['backend']}:{record['precision']}" if "backend" in record else None)))
    head = head.encode("ascii", "replace").decode()[:limit]
    digest = record.get("manifest_sha256", "")
    room = limit - len(head) - len(_MANIFEST)
    if digest and room >= 12:  # shorter than 12 hex digits is no use for finding the bundle
        head += f"{_MANIFEST}{digest[:room]}"
    return head


def described_manifest(description: str) -> str:
    """The part of the manifest's sha256 that :func:`short_description` wrote into
    ``description`` (lower-case hex, at least 12 digits); "" where it holds none."""
    _, found, digest = str(description).rpartition(_MANIFEST)
    digest = digest.strip()
    if not found or len(digest) < 12 or any(c not in "0123456789abcdef" for c in digest):
        return ""
    return digest
