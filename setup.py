"""Build the C kernels (csrc/) and their Cython wrapper as edgeseg.kernels._kernels."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
C_SOURCES = sorted(str(p.relative_to(HERE)) for p in (HERE / "csrc").glob("*.c"))


def _version() -> str:
    """The version's one source: ES_VERSION_MAJOR/MINOR/PATCH in csrc/edgeseg.h, which the C
    library (es_version(), its SONAME, pkg-config and CMake files) is built from too. It is
    written into edgeseg/_version.py (generated, git-ignored), which ``import edgeseg`` reads:
    every build path runs this file first (sdist, wheel, ``pip install -e``, ``make build``'s
    build_ext --inplace), so each carries it, from a checkout or an unpacked sdist alike."""
    spec = importlib.util.spec_from_file_location("_edgeseg_version_header", HERE / "edgeseg" / "_version_header.py")
    reader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reader)
    try:
        version = reader.header_version(HERE / "csrc" / "edgeseg.h")
    except (OSError, ValueError) as exc:
        raise SystemExit(f"edgeseg: error: {exc}") from None
    text = ("# Written by setup.py from csrc/edgeseg.h (ES_VERSION_MAJOR/MINOR/PATCH); not in git.\n"
            f'__version__ = "{version}"\n')
    target = HERE / "edgeseg" / "_version.py"
    if not target.is_file() or target.read_text() != text:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
    return version


def _compiler_has_openmp(compiler) -> bool:
    """Compile a tiny OpenMP program; fall back to a serial build when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "omp_probe.c"
        src.write_text("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        try:
            objs = compiler.compile([str(src)], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objs, str(Path(tmp) / "probe"), extra_postargs=["-fopenmp"])
        except Exception:  # any compiler or linker failure means "no OpenMP"
            return False
    return True


class BuildExtWithOpenMP(build_ext):
    def build_extensions(self) -> None:
        # -ffp-contract=off: a * b + c stays two roundings (no FMA) with every compiler; clang
        # contracts by default even with -std=c99, and the near-tie recomputation needs the
        # operations rounded one by one (docs/kernels.md, Porting).
        extra_c = ["-O3", "-std=c99", "-ffp-contract=off"]
        extra_l: list[str] = []
        if os.environ.get("EDGESEG_NO_OPENMP") != "1" and _compiler_has_openmp(self.compiler):
            extra_c.append("-fopenmp")
            extra_l.append("-fopenmp")
        else:
            sys.stderr.write("edgeseg: building the kernels without OpenMP (serial)\n")
        if os.environ.get("EDGESEG_NO_MULTIVERSION") == "1":
            # Baseline code only (no AVX2 clones): the sanitizer run tests this variant.
            extra_c.append("-DES_NO_MULTIVERSION")
        sanitize = os.environ.get("EDGESEG_SANITIZE")
        if sanitize:
            flags = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
            extra_c += flags
            extra_l += flags
        for ext in self.extensions:
            ext.extra_compile_args = extra_c + list(ext.extra_compile_args or [])
            ext.extra_link_args = extra_l + list(ext.extra_link_args or [])
        super().build_extensions()


def _without_links(lib: Path) -> None:
    """A wheel holds no symbolic links (each would become another copy of the library): keep the
    library under its SONAME, the name programs load, and make libedgeseg.so, the name -ledgeseg
    finds, a linker script naming it, as glibc's libc.so is. A program linked through either
    records NEEDED libedgeseg.so.MAJOR, as against make sdk's tree."""
    link = lib / "libedgeseg.so"
    soname = os.readlink(link)
    os.replace(lib / os.readlink(lib / soname), lib / soname)
    script = lib / ".libedgeseg.so.tmp"
    script.write_text(f"/* GNU ld script: -ledgeseg links the library by its SONAME */\nINPUT({soname})\n")
    os.replace(script, link)


class BuildPyWithSdk(build_py):
    """Also put libedgeseg (the C API, ``make -C csrc/sdk``) into the package as
    ``edgeseg/libedgeseg/``, where ``edgeseg sdk`` finds it. It links against the OpenVINO of
    the building Python; without OpenVINO or a C toolchain the package is built without it."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # a checkout reads export/ and builds libedgeseg with `make sdk`
        # The export profiles live in export/ at the top of the tree; an installed package reads
        # them from edgeseg/export/profiles/ (edgeseg.export.profiles.PROFILE_DIR).
        profiles = Path(self.build_lib) / "edgeseg" / "export" / "profiles"
        profiles.mkdir(parents=True, exist_ok=True)
        for profile in sorted((HERE / "export").glob("*.toml")):
            self.copy_file(str(profile), str(profiles / profile.name))
        if os.environ.get("EDGESEG_NO_SDK") == "1":
            return
        out = Path(self.build_lib) / "edgeseg" / "libedgeseg"
        with tempfile.TemporaryDirectory() as obj:
            cmd = ["make", "-s", "-C", str(HERE / "csrc" / "sdk"), f"OUT={out.resolve()}", f"OBJ={obj}",
                   f"PY={sys.executable}"]
            if subprocess.run(cmd).returncode != 0:
                sys.stderr.write("edgeseg: building without libedgeseg "
                                 "(needs OpenVINO 2026.0 or later and a C compiler)\n")
            else:
                _without_links(out / "lib")


extensions = [
    Extension(
        "edgeseg.kernels._kernels",
        sources=["edgeseg/kernels/_kernels.pyx", *C_SOURCES],
        include_dirs=["csrc", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    version=_version(),
    ext_modules=cythonize(extensions, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False}),
    cmdclass={"build_ext": BuildExtWithOpenMP, "build_py": BuildPyWithSdk},
)
