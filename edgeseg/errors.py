"""The few exception types edgeseg raises on purpose.

Every error a user can cause (bad data, a wrong checkpoint, a missing optional library) is an
``EdgesegError``; the CLI prints its message as one line and exits non-zero. Anything else that
escapes is a bug in edgeseg.
"""

from __future__ import annotations


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

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install 'edgeseg[{extra}]'"
        )
        self.package = package
        self.extra = extra
        self.purpose = purpose

    def __reduce__(self):  # rebuilt from its three arguments (an error raised in a child process)
        return type(self), (self.package, self.extra, self.purpose)


# Import names whose distribution (what `pip install` takes) is named otherwise.
DISTRIBUTIONS = {"PIL": "Pillow", "nrrd": "pynrrd", "cuda": "cuda-python", "google": "protobuf",
                 "prometheus_client": "prometheus-client"}


def distribution_of(module: str) -> str:
    """The distribution that installs ``module`` (``PIL.Image`` -> ``Pillow``)."""
    top = module.split(".")[0]
    return DISTRIBUTIONS.get(top, top)


def require(module: str, extra: str, purpose: str):
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
                                    f"pip install --force-reinstall 'edgeseg[{extra}]'") from exc


class BrokenDependencyError(EdgesegError):
    """An optional library is installed but fails to import (a missing or mismatched shared library)."""


class BundleError(EdgesegError):
    """A bundle is missing files, has been tampered with, or is of an unsupported schema."""


class BackendError(EdgesegError):
    """A runtime backend cannot load or run an artifact on this machine."""
