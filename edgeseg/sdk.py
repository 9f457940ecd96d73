"""Where libedgeseg, the C API of the runtime, is installed, and the flags to build against it.

A wheel ships the library in ``edgeseg/libedgeseg/`` (``include/``, ``lib/libedgeseg.so``,
``lib/pkgconfig/edgeseg.pc``, ``lib/cmake/edgeseg/``); a source checkout has it in
``build/sdk/`` after ``make sdk``. ``edgeseg sdk`` prints these for build systems, the way
``python -m pybind11 --includes`` does. ``EDGESEG_SDK`` names another folder (an SDK
copied elsewhere); when set, it is the only place looked at.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeseg.errors import EdgesegError

PACKAGE_DIR = Path(__file__).resolve().parent


def sdk_prefix() -> Path:
    """The folder holding ``include/`` and ``lib/`` of libedgeseg; EdgesegError if none is built."""
    chosen = os.environ.get("EDGESEG_SDK")
    candidates = (Path(chosen),) if chosen else (PACKAGE_DIR / "libedgeseg", PACKAGE_DIR.parent / "build" / "sdk")
    for prefix in candidates:
        if (prefix / "lib" / "libedgeseg.so").is_file() and (prefix / "include" / "edgeseg.h").is_file():
            return prefix
    raise EdgesegError("libedgeseg is not built in this install (looked in "
                       f"{', '.join(str(c) for c in candidates)}); run 'make sdk' in the source tree")


def library_path() -> Path:
    """The file a program (or ``ctypes``) loads: ``lib/libedgeseg.so.MAJOR``, the SONAME.
    ``lib/libedgeseg.so`` is for the linker only, and in a wheel it is a linker script that
    ``dlopen`` cannot load."""
    from edgeseg import __version__

    return sdk_prefix() / "lib" / f"libedgeseg.so.{__version__.split('.')[0]}"


def compile_flags() -> str:
    """Compiler flags for ``#include <edgeseg.h>`` (and ``edgeseg.hpp``)."""
    return f"-I{sdk_prefix() / 'include'}"


def link_flags() -> str:
    """Linker flags for libedgeseg, with an rpath so programs find it without LD_LIBRARY_PATH."""
    lib = sdk_prefix() / "lib"
    return f"-L{lib} -Wl,-rpath,{lib} -ledgeseg"


def cmake_dir() -> Path:
    """The folder of ``edgeseg-config.cmake``, for ``-Dedgeseg_DIR=...``."""
    return sdk_prefix() / "lib" / "cmake" / "edgeseg"
