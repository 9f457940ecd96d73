"""``edgeseg --version``: the package version, the C parts it runs on and the runtime libraries.

What a bug report needs to say which code ran: besides edgeseg's own version, whether the C
kernels are compiled in (and with OpenMP), where libedgeseg is, and the versions of the
libraries that change the numbers (the same list the provenance records).
"""

from __future__ import annotations

import platform
from pathlib import Path

import click

from edgeseg import __version__


def _kernels_line() -> str:
    try:
        from edgeseg.kernels import _kernels
    except ImportError as exc:  # a source checkout before `make build`, or a broken build
        return f"C kernels   not importable ({' '.join(str(exc).split())}); run 'make build'"
    openmp = f"OpenMP, {_kernels.default_threads()} threads by default" if _kernels.has_openmp() else "no OpenMP"
    return f"C kernels   {Path(_kernels.__file__).name} ({openmp})"


def _libedgeseg_line() -> str:
    from edgeseg import sdk
    from edgeseg.errors import EdgesegError

    try:
        return f"libedgeseg  {sdk.sdk_prefix() / 'lib' / 'libedgeseg.so'}"
    except EdgesegError:
        return "libedgeseg  not built (make sdk)"


def version_text() -> str:
    """The lines ``edgeseg --version`` prints; the first is ``edgeseg VERSION``."""
    from edgeseg.report.provenance import LIBRARIES, source_commit
    from edgeseg.runtime.machine import installed_versions

    commit = source_commit()
    git = (f" (git {commit['git_commit'][:12]}{', modified' if commit.get('git_dirty') else ''})"
           if commit.get("git_commit") else "")
    found = installed_versions(LIBRARIES)
    libraries = ", ".join(f"{name} {found.get(name, '-')}" for name in LIBRARIES)
    return "\n".join([f"edgeseg {__version__}{git}", _kernels_line(), _libedgeseg_line(),
                      f"python      {platform.python_version()} on {platform.system()} {platform.machine()}",
                      f"libraries   {libraries} ('-': not installed)"])


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(version_text())
    ctx.exit()


def version_option(command):
    """``--version``, printing :func:`version_text` and exiting, as click's version option does."""
    return click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
                        help="Show the version, the C kernel build and the runtime libraries, and exit.")(command)
