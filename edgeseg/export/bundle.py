"""Bundle writer: the manifest and parity report beside the artifacts, all or nothing.

Artifacts are written into a staging folder next to the target (``staged_bundle``); only
when every artifact has passed the gate are ``manifest.json`` and ``parity.json`` added and
the folder put in place (``edgeseg.atomic.replace_dir``: one exchange with an old bundle), so
a failed or killed export leaves no bundle and an old one intact, and the staging folders of
a killed export are removed by the next export to the same place.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeseg import __version__
from edgeseg.atomic import TargetAppeared, atomic_dir, atomic_write_text, check_output_folder, within
from edgeseg.data.field_of_view import RECORD_KEY, parse_training_fov
from edgeseg.errors import DataError
from edgeseg.report.provenance import environment, valid_unicode
from edgeseg.runtime.manifest import (MANIFEST_NAME, PARITY_NAME, ArtifactEntry, Manifest, TensorInfo,
                                      sha256_file)
from edgeseg.runtime.postprocess_options import PostprocessOptions
from edgeseg.spec import PreprocessSpec


def check_output(out: str | Path, force: bool, inputs: tuple[tuple[str, str | Path | None], ...] = ()) -> Path:
    """Refuse an output that exists (without ``force``), that is a folder other than a bundle,
    that holds one of the export's ``inputs`` (``(what, path)``: the checkpoint, the calibration
    data, ...; replacing the folder would delete them), or whose parent cannot hold a new folder;
    before any work is done."""
    target = Path(out)
    if target.exists():
        if not target.is_dir():
            raise DataError(f"output {target} exists and is not a folder")
        if not force:
            raise DataError(f"output {target} already exists; pass --overwrite to replace it")
        if any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
            raise DataError(f"output {target} is a non-empty folder that is not a bundle; refusing to replace it")
        for what, path in inputs:
            if path is not None and os.path.lexists(path) and within(path, target):
                raise DataError(f"output {target} holds {what} {path}, which replacing the bundle would delete; "
                                "name another --out or move it out first")
    check_output_folder(target, "bundle", staged=True)
    return target


@contextlib.contextmanager
def staged_bundle(out: str | Path, replace: bool = True) -> Iterator[Path]:
    """A temporary folder that replaces ``out`` whole when the block succeeds, and vanishes if not.
    ``replace=False`` (no --overwrite): it lands only where ``out`` is still absent, so of two exports
    started to one new folder the second to finish is refused rather than replacing the first."""
    try:
        with atomic_dir(out, replace=replace) as tmp:
            yield tmp
    except TargetAppeared:
        raise DataError(f"output {out} appeared while this export ran (another export to it?); "
                        "pass --overwrite to replace it") from None
    except OSError as exc:
        raise DataError(f"cannot write the bundle {out}: {exc.strerror or exc}") from None


def artifact_entry(folder: Path, file: str, fmt: str, precision: str, fingerprint: dict | None = None,
                   extra: dict | None = None, excluded: dict[str, str] | None = None,
                   scored: list[str] | None = None) -> ArtifactEntry:
    """The manifest entry of ``folder/file``: its sha256 and size as written, the runners the
    parity gate ran on it (``scored``) and those it failed (``excluded``: backend name -> reason)."""
    path = folder / file
    return ArtifactEntry(file=file, format=fmt, precision=precision, sha256=sha256_file(path),
                         bytes=path.stat().st_size, fingerprint=fingerprint, extra=dict(extra or {}),
                         excluded=dict(excluded or {}), scored=None if scored is None else tuple(scored))


def build_manifest(payload: dict[str, Any], checkpoint: Path, checkpoint_sha256: str, spec: PreprocessSpec,
                   artifacts: list[ArtifactEntry], max_batch: int, calibration: dict | None) -> Manifest:
    """The bundle manifest for a checkpoint's ``payload`` and its exported ``artifacts``."""
    class_names = list(payload["class_names"])
    rows, cols = spec.size
    return Manifest(
        spec=spec,
        labels=dict(enumerate(class_names)),
        inputs=(TensorInfo("image", (-1, 1, rows, cols), "float32"),),
        outputs=(TensorInfo("logits", (-1, len(class_names), rows, cols), "float32"),),
        artifacts=tuple(artifacts),
        model=dict(payload["model"]),
        postprocess=PostprocessOptions.from_dict(payload.get("postprocess"), len(class_names)).to_dict(),
        max_batch=int(max_batch),
        calibration=calibration,
        # valid_unicode: a path that is not UTF-8 (the checkpoint's name, a command's arguments, the
        # working folder, the data source) would make a manifest neither runtime reads
        source=valid_unicode({"checkpoint": checkpoint.name, "sha256": checkpoint_sha256, "epoch": payload.get("epoch"),
                              "edgeseg_version": payload.get("edgeseg_version"),
                              # Checkpoints from before recipes carry none; their bundles simply omit it.
                              **({"recipe": payload["recipe"]} if payload.get("recipe") else {}),
                              # What the training slices' image pixels meant, so predict reads PNG/JPG input alike.
                              **({"intensity": intensity} if (intensity := (payload.get("train_config") or {}).get("intensity"))
                                 else {}),
                              **training_record(payload),
                              # how the artifacts were made: the ONNX bytes and INT8 scales follow these versions
                              "export": environment()}),
        edgeseg_version=__version__,
        # the training cases' field of view; None for a checkpoint from before it, or of slices without spacing
        training_fov=parse_training_fov(payload.get(RECORD_KEY), DataError, "checkpoint"),
        created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def training_record(payload: dict[str, Any]) -> dict[str, Any]:
    """``{"training": ...}``: the checkpoint's seed, data hashes and sessions (commands, software,
    machines), without the per-case hashes the checkpoint keeps; ``{}`` for a checkpoint written
    before training recorded them."""
    record = payload.get("provenance") or {}
    if not record:
        return {}
    data = {k: v for k, v in (record.get("data") or {}).items() if k != "case_sha256"}
    return {"training": {"seed": record.get("seed"), "data": data, "sessions": list(record.get("sessions") or [])}}


def write_manifest(folder: Path, manifest: Manifest, parity: dict) -> None:
    """Write ``manifest.json`` and ``parity.json`` into the staged bundle folder."""
    from edgeseg.report.output import to_json_compatible

    atomic_write_text(folder / PARITY_NAME, json.dumps(to_json_compatible(parity), indent=2) + "\n")
    atomic_write_text(folder / MANIFEST_NAME, manifest.to_json())
