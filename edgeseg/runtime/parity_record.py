"""The runners the parity gate ran, for a manifest that does not list them: ``parity.json``'s rows.

Bundles exported before the manifest listed the gate's runners (``scored``, from 2026-12-06)
record them only in ``parity.json``, one row per artifact and runner (``file``, ``sha256``,
``runner``, ``passed``). Where an artifact's entry has no ``scored``, ``auto`` takes those rows as
the record, as it takes ``scored`` (a runner with a row is scored; one whose row failed is the
manifest's ``excluded``), and only where the whole report is this bundle's:

- ``parity.json`` is a regular file inside the bundle folder, of at most
  :data:`~edgeseg.runtime.bundle_files.MANIFEST_MAX_BYTES`, strict JSON (no NaN, no NUL
  character, no unpaired surrogate), an object whose ``results`` is a list of objects;
- every row names an artifact of the manifest by ``file`` *and* the ``sha256`` it measured
  (reports from before 2026-12-06 record no sha256 per row: tied to the artifacts by name alone,
  they vouch for nothing);
- a row's ``runner`` is absent or null (the half-precision check) or a non-empty string, and a
  row that did not pass names a runner the manifest excludes for that artifact (the gate wrote
  both from one verdict);
- every artifact without ``scored`` has a row.

Anything else, and the report vouches for nothing: the manifest's own rule holds (an INT8 graph
on the runner every gate ran, other precisions by ``excluded``) until ``edgeseg gate`` writes
``scored``. ``parity.json`` is not covered by the bundle's integrity check (no sha256 of it is
recorded anywhere, and it is not part of the bundle's identity, the manifest's sha256): these
conditions keep a report of another export, of artifacts since replaced, or of a failed runner
from widening the choice, not a report forged with this bundle's hashes (public in its manifest;
no key signs a report): such a report never lifts ``excluded``, and lets ``auto`` pick only a
runner that ``--backend`` could name. libedgeseg reads it by the same rules
(csrc/runtime/parity_record.c).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from edgeseg.errors import BundleError
from edgeseg.runtime.bundle_files import read_bundle_json_bytes
from edgeseg.runtime.manifest import PARITY_NAME, Manifest, check_json_strings, refuse_json_constant


def with_parity_record(bundle: str | Path, manifest: Manifest) -> Manifest:
    """``manifest`` with ``scored`` filled from ``parity.json`` for every artifact that has none,
    where the report is this bundle's (see the module's docstring); ``manifest`` itself otherwise.
    The result is for choosing a runner only: its identity (``sha256``) is the file's."""
    if all(entry.scored is not None for entry in manifest.artifacts):
        return manifest
    recorded = parity_runners(bundle, manifest)
    if recorded is None:
        return manifest
    return replace(manifest, artifacts=tuple(entry if entry.scored is not None else replace(entry, scored=recorded[entry.file])
                                             for entry in manifest.artifacts))


def parity_runners(bundle: str | Path, manifest: Manifest) -> dict[str, tuple[str, ...]] | None:
    """The runners of ``parity.json``'s rows by artifact file, in the rows' order, or None where the
    report is not this bundle's or not readable."""
    path = Path(bundle) / PARITY_NAME
    try:
        if not path.is_file():  # a FIFO would wait for a writer
            return None
        data = json.loads(read_bundle_json_bytes(path).decode("utf-8-sig"), parse_constant=refuse_json_constant)
        check_json_strings(data, path)
    except (OSError, ValueError, RecursionError, BundleError):  # ValueError: not JSON, not UTF-8
        return None
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        return None
    by_file = {entry.file: entry for entry in manifest.artifacts}
    found: dict[str, list[str]] = {}
    for row in rows:
        entry = by_file.get(row.get("file")) if isinstance(row.get("file"), str) else None
        if entry is None or row.get("sha256") != entry.sha256:
            return None
        found.setdefault(entry.file, [])
        runner = row.get("runner")
        if runner is None:
            continue
        if not isinstance(runner, str) or not runner or (row.get("passed") is not True and runner not in entry.excluded):
            return None
        found[entry.file].append(runner)
    if any(entry.scored is None and entry.file not in found for entry in manifest.artifacts):
        return None
    return {file: tuple(dict.fromkeys(runners)) for file, runners in found.items()}
