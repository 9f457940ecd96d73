"""``edgeseg version`` (and ``edgeseg --version``): what this installation is made of.

The package version, Python, how the C kernels were built (compiler, OpenMP) and the version
of each backend library found, so that a result's provenance can be matched to an installation.
The libraries are looked up in the installed packages' metadata, never imported: asking for the
version must not take the seconds torch takes to import.
"""

from __future__ import annotations

import click

# the distributions each library may be installed as (the GPU builds have their own names)
LIBRARIES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"), "openvino": ("openvino",),
             "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11"), "torch": ("torch",),
             "numpy": ("numpy",)}
OPENMP_VERSIONS = {200505: "2.5", 200805: "3.0", 201107: "3.1", 201307: "4.0", 201511: "4.5", 201811: "5.0",
                   202011: "5.1", 202111: "5.2", 202411: "6.0"}


def installation() -> dict:
    """The facts :func:`command` prints: ``edgeseg``, ``python``, ``kernels`` (``compiler``,
    ``openmp``: the ``_OPENMP`` date, 0 for a serial build) and ``libraries`` (name -> version,
    None where not installed)."""
    import platform
    from importlib import metadata

    from edgeseg import __version__
    from edgeseg.kernels import build_info

    def found(names) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {"edgeseg": __version__, "python": platform.python_version(), "kernels": build_info(),
            "libraries": {name: found(dists) for name, dists in LIBRARIES.items()}}


def version_text(facts: dict) -> str:
    """``facts`` as lines; the first is click's ``edgeseg, version X``, which scripts read."""
    kernels = facts["kernels"]
    openmp = kernels["openmp"]
    omp = "no OpenMP (serial)" if not openmp else f"OpenMP {OPENMP_VERSIONS.get(openmp, '?')} ({openmp})"
    lines = [f"edgeseg, version {facts['edgeseg']}", f"python {facts['python']}",
             f"kernels: {kernels['compiler']}, {omp}"]
    lines += [f"{name} {version or 'not installed'}" for name, version in facts["libraries"].items()]
    return "\n".join(lines)


def print_version(ctx: click.Context, param, value) -> None:
    """The ``--version`` callback: the same text as ``edgeseg version``."""
    if value and not ctx.resilient_parsing:
        click.echo(version_text(installation()))
        ctx.exit()


@click.command("version")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def command(as_json: bool) -> None:
    """Print the edgeseg version, Python, the C kernels' build (compiler, OpenMP) and the
    installed versions of onnxruntime, openvino, tensorrt, torch and numpy."""
    import json

    facts = installation()
    click.echo(json.dumps(facts, indent=2) if as_json else version_text(facts))
