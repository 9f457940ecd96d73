"""The spec and labels a bundle's artifacts carry inside them, against the manifest's.

The export writes the spec (canonical JSON) and the labels into every artifact that can hold
them: an ONNX graph's ``metadata_props`` (:func:`edgeseg.export.onnx_export.set_metadata`) and a
TorchScript archive's extra files (:mod:`edgeseg.export.torchscript`); the INT8 calibration
record keeps the spec's hash. The manifest's sha256 entries cover the artifacts, not the
manifest itself, so an edited ``spec`` or ``labels`` in ``manifest.json`` passes the hash check;
``edgeseg inspect`` compares them with what the artifacts embed (:func:`embedded_checks`). The
runtime does not: loading a bundle parses no graph.

Both readers need neither onnx nor torch: an ONNX file is a protobuf ``ModelProto`` whose
field 14 holds the metadata entries (key 1, value 2), and a TorchScript file is a zip archive.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from edgeseg.errors import SpecError
from edgeseg.export.onnx_export import LABELS_KEY, SPEC_KEY
from edgeseg.export.torchscript import LABELS_FILE, SPEC_FILE
from edgeseg.runtime.manifest import Manifest
from edgeseg.runtime.onnx_form import fields as _fields
from edgeseg.spec import PreprocessSpec

METADATA_PROPS = 14  # ModelProto.metadata_props (onnx.proto)
# a spec is a few hundred bytes and 256 labels a few kB; more is no export's
MAX_EXTRA_BYTES = 1 << 20


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` as a dict, read without onnx; ValueError for a file that
    is not a protobuf message."""
    data = memoryview(Path(path).read_bytes())
    props = {}
    for number, value in _fields(data):
        if number == METADATA_PROPS and isinstance(value, memoryview):
            entry = {n: bytes(v).decode("utf-8") for n, v in _fields(value) if n in (1, 2) and isinstance(v, memoryview)}
            props[entry.get(1, "")] = entry.get(2, "")
    return props


def torchscript_extra(path: str | Path) -> dict[str, str]:
    """The spec and labels extra files of a TorchScript archive (``<name>/extra/<file>``) as text,
    read without torch; ValueError for one that inflates past :data:`MAX_EXTRA_BYTES`."""
    found = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) != 3 or parts[1] != "extra" or parts[2] not in (SPEC_FILE, LABELS_FILE):
                continue  # other members are not read: a few kB of deflate inflates to gigabytes
            with archive.open(name) as member:
                data = member.read(MAX_EXTRA_BYTES + 1)  # the header's size may lie; the stream cannot
            if len(data) > MAX_EXTRA_BYTES:
                raise ValueError(f"{name} inflates to more than {MAX_EXTRA_BYTES} bytes")
            found[parts[2]] = data.decode("utf-8")
    return found


def embedded(path: Path, fmt: str) -> tuple[str, str] | None:
    """(spec JSON, labels JSON) embedded in an artifact of format ``fmt``; None for a format that
    embeds none (TensorRT engines); KeyError where an artifact lacks them."""
    if fmt == "onnx":
        props = onnx_metadata(path)
        return props[SPEC_KEY], props[LABELS_KEY]
    if fmt == "torchscript":
        extra = torchscript_extra(path)
        return extra[SPEC_FILE], extra[LABELS_FILE]
    return None


def embedded_checks(bundle: str | Path, manifest: Manifest) -> tuple[list[str], list[str]]:
    """(notes, problems): each artifact's embedded spec and labels and the calibration record's
    spec hash against the manifest's. Missing or unreadable artifacts are left to the hash check."""
    notes, problems = [], []
    for entry in manifest.artifacts:
        path = Path(bundle) / entry.file
        if not path.is_file():
            continue
        try:
            found = embedded(path, entry.format)
        except KeyError:
            notes.append(f"{entry.file} embeds no spec and labels: not compared with the manifest")
            continue
        except (OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            problems.append(f"{entry.file}: its embedded spec and labels cannot be read ({' '.join(str(exc).split())})")
            continue
        if found is None:
            notes.append(f"{entry.file} ({entry.format}) embeds no spec: not compared with the manifest")
            continue
        problems += _compare(entry.file, manifest, *found)
    recorded = (manifest.calibration or {}).get("spec_hash")
    if recorded is not None and recorded != manifest.spec.hash:
        problems.append(f"the INT8 calibration record is for spec {recorded}, the manifest's spec is {manifest.spec.hash}")
    return notes, problems


def _compare(file: str, manifest: Manifest, spec_json: str, labels_json: str) -> list[str]:
    """The differences between an artifact's embedded spec and labels and the manifest's."""
    problems = []
    try:
        spec = PreprocessSpec.from_json(spec_json)
        if spec.to_json() != manifest.spec.to_json():
            ours, theirs = manifest.spec.to_dict(), spec.to_dict()
            fields = ", ".join(f"{k} {theirs.get(k)} (manifest {ours.get(k)})" for k in sorted(set(ours) | set(theirs))
                               if ours.get(k) != theirs.get(k))
            problems.append(f"manifest spec differs from the spec {file} embeds: {fields}")
    except (SpecError, ValueError, TypeError) as exc:
        problems.append(f"{file}: its embedded spec is not readable ({exc})")
    try:
        labels = {int(k): v for k, v in json.loads(labels_json).items()}
    except (ValueError, TypeError, AttributeError, RecursionError):
        return [*problems, f"{file}: its embedded labels are not readable"]
    if labels != manifest.labels:
        problems.append(f"manifest labels {_text(manifest.labels)} differ from the labels {file} embeds: {_text(labels)}")
    return problems


def _text(labels: dict[int, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
