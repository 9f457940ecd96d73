"""Where libedgeseg, the C API of the runtime, is installed, and the flags to build against it.

A wheel ships the library in ``edgeseg/libedgeseg/`` (``include/``, ``lib/libedgeseg.so``,
``lib/pkgconfig/edgeseg.pc``, ``lib/cmake/edgeseg/``); a source checkout has it in
``build/sdk/`` after ``make sdk``. ``edgeseg sdk`` prints these for build systems, the way
``python -m pybind11 --includes`` does. ``EDGESEG_SDK`` names another folder (an SDK
copied elsewhere); when set, it is the only place looked at.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from edgeseg.errors import EdgesegError

PACKAGE_DIR = Path(__file__).resolve().parent


def sdk_prefix() -> Path:
    """The folder holding ``include/`` and ``lib/`` of libedgeseg; EdgesegError if none is built,
    or if the first one found holds several major versions and :func:`library_file` cannot tell
    which is meant."""
    chosen = os.environ.get("EDGESEG_SDK")
    # absolute: the flags printed are used from other folders (a build tree, a Makefile's recipe)
    candidates = (Path(os.path.abspath(os.path.expanduser(chosen))),) if chosen else (PACKAGE_DIR / "libedgeseg", PACKAGE_DIR.parent / "build" / "sdk")
    for prefix in candidates:
        if (prefix / "include" / "edgeseg.h").is_file() and _majors(prefix / "lib"):
            library_file(prefix / "lib")
            return prefix
    if chosen:
        raise EdgesegError(f"EDGESEG_SDK={chosen!r} holds no libedgeseg (include/edgeseg.h and lib/libedgeseg.so.MAJOR): "
                           "point it at an SDK folder (build/sdk after 'make sdk', or a copy of one), or unset it "
                           "to use this install's")
    raise EdgesegError("libedgeseg is not built in this install (looked in "
                       f"{', '.join(str(c) for c in candidates)}); run 'make sdk' in the source tree")


def _majors(lib: Path) -> list[str]:
    """The ``libedgeseg.so.MAJOR`` names (SONAMEs) in an SDK's lib/."""
    try:
        names = os.listdir(lib)
    except OSError:
        return []
    return sorted(name for name in names if re.fullmatch(r"libedgeseg\.so\.\d+", name))


def elf_soname(path: Path) -> str | None:
    """DT_SONAME of an ELF shared library, from its dynamic section; None for a file that is not
    ELF (a linker script) or has no SONAME."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    shoff = struct.unpack_from(order + ("Q" if wide else "I"), data, 0x28 if wide else 0x20)[0]
    shentsize, shnum = struct.unpack_from(order + "HH", data, 0x3A if wide else 0x2E)
    section = order + ("IIQQQQIIQQ" if wide else "IIIIIIIIII")
    sections = [struct.unpack_from(section, data, shoff + i * shentsize) for i in range(shnum)]
    entry = order + ("qQ" if wide else "iI")
    for _name, kind, _flags, _addr, offset, size, link, *_ in sections:
        if kind != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[link][4]
        for at in range(offset, offset + size, struct.calcsize(entry)):
            tag, value = struct.unpack_from(entry, data, at)
            if tag == 14:  # DT_SONAME
                return data[strtab + value:data.index(b"\0", strtab + value)].decode()
            if tag == 0:  # DT_NULL
                break
    return None


def _linked_name(link: Path) -> str | None:
    """The SONAME that ``lib/libedgeseg.so``, the name -ledgeseg finds, stands for: the name its
    symbolic link gives, the SONAME of the ELF file it is, or the one its linker script names."""
    if link.is_symlink():
        target = os.readlink(link)
        found = re.fullmatch(r"(libedgeseg\.so\.\d+)(\.\d+)*", os.path.basename(target))
        return found.group(1) if found else _linked_name(link.parent / target)
    if not link.is_file():
        return None
    soname = elf_soname(link)
    if soname is None:
        script = re.search(rb"INPUT\(\s*(libedgeseg\.so\.\d+)\s*\)", link.read_bytes()[:4096])
        soname = script.group(1).decode() if script else None
    return soname


def library_file(lib: Path) -> Path:
    """The ``libedgeseg.so.MAJOR`` of an SDK's lib/, the major version of the library on disk
    (not of this Python package): the one such file, or, where several major versions are
    installed side by side, the one ``libedgeseg.so`` stands for."""
    majors = _majors(lib)
    if len(majors) == 1:
        return lib / majors[0]
    linked = _linked_name(lib / "libedgeseg.so")
    if linked in majors:
        return lib / linked
    if not majors:
        raise EdgesegError(f"no libedgeseg.so.MAJOR in {lib}; run 'make sdk' in the source tree")
    raise EdgesegError(f"{lib} holds libedgeseg of several major versions ({', '.join(majors)}) and its libedgeseg.so "
                       "names none of them; set EDGESEG_SDK to a folder with one")


def library_path() -> Path:
    """The file a program (or ``ctypes``) loads: ``lib/libedgeseg.so.MAJOR``, the SONAME.
    ``lib/libedgeseg.so`` is for the linker only, and in a wheel it is a linker script that
    ``dlopen`` cannot load."""
    return library_file(sdk_prefix() / "lib")


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
