"""The entries of a bundle manifest: the model's tensors and the artifact files.

``TensorInfo`` is a model input or output (name, shape with ``-1`` for the dynamic batch axis,
dtype); ``ArtifactEntry`` one model file with what checks it is the file that was exported (its
sha256 and size) and what the parity gate said of it (``scored``, ``excluded``). Both refuse a
malformed entry with a ``BundleError`` naming it. ``edgeseg.runtime.manifest`` builds the whole
manifest from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from edgeseg.errors import BundleError, shown

DTYPES = ("float32", "float16", "int64", "uint8")
# The largest magnitude of a manifest integer. libedgeseg holds JSON numbers as doubles (exact to
# 2^53) and takes integers up to 10^15 (es_json_is_integer); Python's json reads any size, so
# without this bound a manifest that one runtime opens the other would refuse, or read otherwise.
MAX_JSON_INT = 10**15


def is_manifest_int(value: Any) -> TypeGuard[int]:
    """A JSON integer (not a bool, not 2.0, not "2") of magnitude at most MAX_JSON_INT."""
    return isinstance(value, int) and not isinstance(value, bool) and -MAX_JSON_INT <= value <= MAX_JSON_INT


def manifest_object(data: dict, key: str, what: str = "manifest") -> dict:
    """``data[key]`` as a dict: {} where absent or null, BundleError for another type (libedgeseg
    refuses those too; ``or {}`` read [] and false as empty)."""
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise BundleError(f"{what} {key} must be a JSON object, got {shown(value)}")
    return dict(value or {})


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (``-1`` for the dynamic batch axis) and dtype of a model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise BundleError(f"tensor name must be a non-empty string, got {shown(self.name)}")
        if not isinstance(self.shape, (tuple, list)) or not all(is_manifest_int(n) for n in self.shape):
            raise BundleError(f"tensor {shown(self.name)}: shape must be a list of integers, got {shown(self.shape)}")
        shape = tuple(self.shape)
        if any(n < -1 or n == 0 for n in shape):
            raise BundleError(f"tensor {shown(self.name)}: shape {list(shape)} has a size below 1 (use -1 for dynamic)")
        if self.dtype not in DTYPES:
            raise BundleError(f"tensor {shown(self.name)}: dtype must be one of {DTYPES}, got {shown(self.dtype)}")
        object.__setattr__(self, "shape", shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Any) -> "TensorInfo":
        if not isinstance(data, dict) or not {"name", "shape"} <= set(data):
            raise BundleError(f"a tensor entry needs 'name' and 'shape', got {shown(data)}")
        if not isinstance(data["shape"], list):
            raise BundleError(f"tensor {shown(data['name'])}: shape must be a list of integers, got {shown(data['shape'])}")
        return cls(name=data["name"], shape=tuple(data["shape"]), dtype=data.get("dtype", "float32"))


@dataclass(frozen=True)
class ArtifactEntry:
    """One model file of a bundle: what it is and how to check it is the file that was exported."""

    file: str
    format: str
    precision: str
    sha256: str
    bytes: int
    fingerprint: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: backend name -> why the parity gate failed it on this artifact; ``auto`` skips those
    excluded: dict[str, str] = field(default_factory=dict)
    #: the runners the parity gate ran on this artifact (passed or failed); None: not recorded
    #: (a bundle from before the gate recorded them), where ``auto`` judges by ``excluded`` alone
    scored: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        from edgeseg.runtime.runners import artifact_formats  # the runners say what they load

        formats = artifact_formats()
        if self.format not in formats:
            raise BundleError(f"artifact {shown(self.file)}: no backend loads format {shown(self.format)} "
                              f"(known formats: {', '.join(formats)})")
        if self.precision not in formats[self.format]:
            raise BundleError(f"artifact {shown(self.file)}: no backend runs {self.format} in precision "
                              f"{shown(self.precision)} (it runs {', '.join(formats[self.format])})")
        if not isinstance(self.excluded, dict) or not all(isinstance(v, str) for v in self.excluded.values()):
            raise BundleError(f"artifact {shown(self.file)}: 'excluded' must map backend names to reasons, got {shown(self.excluded)}")
        if self.scored is not None:
            if not isinstance(self.scored, (list, tuple)) or not all(isinstance(v, str) and v for v in self.scored):
                raise BundleError(f"artifact {shown(self.file)}: 'scored' must list backend names, got {shown(self.scored)}")
            object.__setattr__(self, "scored", tuple(self.scored))
        # 255 bytes: the longest file name filesystems take (NAME_MAX); longer fails in stat().
        if (Path(self.file).name != self.file or self.file in ("", ".", "..") or "\0" in self.file
                or len(self.file.encode()) > 255):
            raise BundleError(f"artifact file must be a plain file name inside the bundle, got {shown(self.file)}")
        if not (isinstance(self.sha256, str) and len(self.sha256) == 64):
            raise BundleError(f"artifact {shown(self.file)}: sha256 must be 64 hex digits, got {shown(self.sha256)}")

    @property
    def key(self) -> str:
        """``format-precision``, e.g. ``onnx-int8``: how users and reports name an artifact."""
        return f"{self.format}-{self.precision}"

    def to_dict(self) -> dict[str, Any]:
        d = {"file": self.file, "format": self.format, "precision": self.precision,
             "sha256": self.sha256, "bytes": int(self.bytes), "fingerprint": self.fingerprint}
        if self.extra:
            d["extra"] = self.extra
        if self.scored is not None:
            d["scored"] = list(self.scored)
        if self.excluded:
            d["excluded"] = dict(self.excluded)
        return d

    @classmethod
    def from_dict(cls, data: Any) -> "ArtifactEntry":
        needed = {"file", "format", "precision", "sha256", "bytes"}
        if not isinstance(data, dict) or not needed <= set(data):
            missing = sorted(needed - set(data)) if isinstance(data, dict) else sorted(needed)
            raise BundleError(f"artifact entry lacks {missing}")
        if not is_manifest_int(data["bytes"]) or data["bytes"] < 0:
            raise BundleError(f"artifact {shown(data['file'])}: bytes must be a whole number, got {shown(data['bytes'])}")
        return cls(file=data["file"], format=data["format"], precision=data["precision"],
                   sha256=data["sha256"], bytes=data["bytes"], fingerprint=data.get("fingerprint"),
                   extra=manifest_object(data, "extra", f"artifact {shown(data['file'])}:"),
                   excluded={} if data.get("excluded") is None else data["excluded"], scored=data.get("scored"))
