"""The few exception types edgeseg raises on purpose.

Every error a user can cause (bad data, a wrong checkpoint, a missing optional library) is an
``EdgesegError``; the CLI prints its message as one line and exits non-zero. Anything else that
escapes is a bug in edgeseg.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any


class EdgesegError(Exception):
    """Base class for errors caused by input, configuration or environment, not by edgeseg."""


class DataError(EdgesegError):
    """Input data is missing, malformed, or not what the operation can honour."""


class SpecError(EdgesegError):
    """A PreprocessSpec is invalid or cannot be applied to the given input."""


class ModelConfigError(EdgesegError, ValueError):
    """A model configuration is invalid or does not fit the input."""


class CheckpointError(EdgesegError):
    """A checkpoint is corrupt, incomplete, or from an incompatible model."""


class MissingDependencyError(EdgesegError):
    """An optional library is needed; the message names the extra that installs it."""

    def __init__(self, package: str, extra: str | None, purpose: str) -> None:
        # no extra: a library a runner plugin's own distribution depends on, not one of edgeseg's
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install {f'edgeseg[{extra}]' if extra else package!r}"
        )
        self.package = package
        self.extra = extra
        self.purpose = purpose

    def __reduce__(self) -> tuple[type[MissingDependencyError], tuple[str, str | None, str]]:  # rebuilt from its three arguments (an error raised in a child process)
        return type(self), (self.package, self.extra, self.purpose)


# Import names whose distribution (what `pip install` takes) is named otherwise.
DISTRIBUTIONS = {"PIL": "Pillow", "nrrd": "pynrrd", "cuda": "cuda-python", "google": "protobuf",
                 "prometheus_client": "prometheus-client", "grpc": "grpcio"}


def distribution_of(module: str) -> str:
    """The distribution that installs ``module`` (``PIL.Image`` -> ``Pillow``)."""
    top = module.split(".")[0]
    return DISTRIBUTIONS.get(top, top)


def require(module: str, extra: str | None, purpose: str) -> ModuleType:
    """Import an optional module, or raise MissingDependencyError naming the extra (not installed)
    or BrokenDependencyError (installed, but its import fails with another error)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(distribution_of(module), extra, purpose) from exc
    except Exception as exc:  # installed but broken: a shared library it loads is missing or of another version
        package = distribution_of(module)
        raise BrokenDependencyError(f"{purpose}: the installed '{package}' package fails to import "
                                    f"({type(exc).__name__}: {' '.join(str(exc).split())}); reinstall it: "
                                    f"pip install --force-reinstall {f'edgeseg[{extra}]' if extra else package!r}") from exc


class BrokenDependencyError(EdgesegError):
    """An optional library is installed but fails to import (a missing or mismatched shared library)."""


class BundleError(EdgesegError):
    """A bundle is missing files, has been tampered with, or is of an unsupported schema."""


class BackendError(EdgesegError):
    """A runtime backend cannot load or run an artifact on this machine."""


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut after ``limit`` characters (the cut says how
    long the whole was): a value read from a file can be of any size or depth, and an error is
    one short line that names the key first."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def name_failure(exc: BaseException, path: str | os.PathLike[str],
                 temporaries: Mapping[str, str | os.PathLike[str]] | None = None,
                 staging: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None) -> None:
    """Give an OS error that names no file (a failed ``write()``, a full disk at ``close()``) the
    ``path`` being written, one that names a temporary in ``temporaries`` (temporary path -> the
    file it becomes) that file, and one that names a file in a staging folder (``staging``: that
    folder and the folder it becomes) the file's place in the folder it becomes, so the error
    says what could not be written, never a name that is gone once the write is undone."""
    if not isinstance(exc, OSError):
        return
    if exc.errno is None:
        cause = _os_cause(exc)
        if cause is not None:
            # a library that raised the OS error again as a new one, its traceback in the text
            # (pydicom, naming the data element it was writing): what the OS said is the error
            exc.errno, exc.strerror = cause.errno, cause.strerror
            _set_names(exc, cause.filename, cause.filename2)
        # numpy's short write (np.save, tofile on a full disk) is OSError("N requested and M
        # written"), with no errno, strerror or file
        elif exc.filename is not None or len(exc.args) != 1 or not isinstance(exc.args[0], str):
            return
        else:
            exc.strerror = f"short write ({exc.args[0]}), the disk may be full"
    if exc.filename is None:
        exc.filename = os.fspath(path)
    elif temporaries and str(exc.filename) in temporaries:
        exc.filename = temporaries[str(exc.filename)]
    if staging is not None:
        _set_names(exc, *(_in_place(name, *staging) for name in (exc.filename, exc.filename2)))


def _set_names(exc: OSError, filename: object, filename2: object) -> None:
    """Set an OS error's file names. A ``filename2`` set to None, even over None, makes
    ``str(exc)`` end in " -> None" (CPython then holds None rather than no value), so the
    second name is set only where there is one."""
    exc.filename = filename
    if filename2 is not None or exc.filename2 is not None:
        exc.filename2 = filename2


def _os_cause(exc: BaseException) -> OSError | None:
    """The first OS error with an errno that ``exc`` was raised from or while handling."""
    seen = {id(exc)}
    below = exc.__cause__ or exc.__context__
    while below is not None and id(below) not in seen:
        if isinstance(below, OSError) and below.errno is not None:
            return below
        seen.add(id(below))
        below = below.__cause__ or below.__context__
    return None


def _in_place(name: Any, staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> Any:
    """``name`` (an OS error's file name: str, bytes or None) with a leading ``staging`` folder
    replaced by ``target``."""
    if name is None:
        return None
    try:
        return os.fspath(Path(target) / Path(name).relative_to(staging))
    except (TypeError, ValueError):
        return name
