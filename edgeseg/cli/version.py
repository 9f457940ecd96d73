"""``edgeseg version`` (and ``edgeseg --version``): what this installation is made of.

What a bug report or a result's provenance needs to say which code ran: the package version
(and the git commit of a source checkout), Python, how the C kernels were built (compiler,
OpenMP, and whether the SIMD or the portable paths were compiled), where libedgeseg is, the
version of each backend library found, and each runner
plugin's own package and version (its code is the engine's glue). The libraries are looked up in the installed packages' metadata, never imported: asking for the version must not
take the seconds torch takes to import.
"""

from __future__ import annotations

import click

OPENMP_VERSIONS = {200505: "2.5", 200805: "3.0", 201107: "3.1", 201307: "4.0", 201511: "4.5", 201811: "5.0",
                   202011: "5.1", 202111: "5.2", 202411: "6.0"}


def libraries() -> dict[str, tuple[str, ...]]:
    """Each backend library (the runners name theirs, and the distributions it may be installed
    as: the GPU builds have their own names), then numpy."""
    from edgeseg.runtime.runners import runners

    found: dict[str, tuple[str, ...]] = {}
    for cls in runners().values():  # a plugin that does not load is left out here, listed under plugins
        if cls.library is not None:
            found.setdefault(cls.library, cls.library_distributions())
    return {**found, "numpy": ("numpy",)}


def _kernels() -> dict:
    try:
        from edgeseg.kernels import _kernels as module, build_info
    except ImportError as exc:  # a source checkout before `make build`, or a broken build
        return {"error": f"not importable ({' '.join(str(exc).split())}); run 'make build'"}
    from pathlib import Path

    return {"file": Path(module.__file__).name, **build_info(), "default_threads": int(module.default_threads())}


def _libedgeseg() -> str | None:
    from edgeseg import sdk
    from edgeseg.errors import EdgesegError

    try:
        return str(sdk.library_path())
    except EdgesegError:
        return None


def installation() -> dict:
    """The facts :func:`command` prints: ``edgeseg``, ``source`` (the git commit of a source
    checkout, else empty), ``python``, ``platform``, ``kernels`` (``file``, ``compiler``,
    ``openmp``: the ``_OPENMP`` date, 0 for a serial build; ``simd``: the SIMD paths compiled,
    "portable" for none, edgeseg.kernels.build_info; or ``error``), ``libedgeseg`` (its
    path, None where not built), ``libraries`` (name -> version, None where not installed) and
    ``plugins`` (each plugin's runner name -> ``distribution``, its ``version``, and ``error``:
    why it was left out, None for one that loads)."""
    import platform
    from importlib import metadata

    from edgeseg import __version__
    from edgeseg.report.provenance import source_commit
    from edgeseg.runtime.runners import plugin_distributions, plugin_errors

    def found(names) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {"edgeseg": __version__, "source": source_commit(), "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}", "kernels": _kernels(),
            "libedgeseg": _libedgeseg(), "libraries": {name: found(dists) for name, dists in libraries().items()},
            "plugins": {name: {"distribution": dist, "version": found((dist,)), "error": plugin_errors().get(name)}
                        for name, dist in plugin_distributions().items()}}


def version_text(facts: dict) -> str:
    """``facts`` as lines; the first is click's ``edgeseg, version X``, which scripts read."""
    lines = [f"edgeseg, version {facts['edgeseg']}"]
    source = facts["source"]
    if source.get("git_commit"):
        lines.append(f"source      git {source['git_commit'][:12]}{' (modified)' if source.get('git_dirty') else ''}")
    lines.append(f"python      {facts['python']} on {facts['platform']}")
    kernels = facts["kernels"]
    if "error" in kernels:
        lines.append(f"C kernels   {kernels['error']}")
    else:
        openmp = kernels["openmp"]
        omp = ("no OpenMP (serial)" if not openmp else
               f"OpenMP {OPENMP_VERSIONS.get(openmp, '?')} ({openmp}), {kernels['default_threads']} threads by default")
        simd = kernels.get("simd")  # None: an extension built before it was reported
        paths = ("portable code, no SIMD paths" if simd == "portable" else f"SIMD {simd}" if simd
                 else "SIMD paths not reported (make build)")
        lines.append(f"C kernels   {kernels['file']}: {kernels['compiler']}, {paths}, {omp}")
    lines.append(f"libedgeseg  {facts['libedgeseg'] or 'not built (make sdk)'}")
    libraries = ", ".join(f"{name} {version or '-'}" for name, version in facts["libraries"].items())
    lines.append(f"libraries   {libraries} ('-': not installed)")
    plugins = ", ".join(f"{name} ({plugin['distribution']} {plugin['version'] or '-'}"
                        f"{'; left out: ' + plugin['error'] if plugin.get('error') else ''})"
                        for name, plugin in facts["plugins"].items())
    lines.append(f"plugins     {plugins or 'none'}")
    return "\n".join(lines)


def _print_version(ctx: click.Context, param, value) -> None:
    """The ``--version`` callback: the same text as ``edgeseg version``."""
    if value and not ctx.resilient_parsing:
        click.echo(version_text(installation()))
        ctx.exit()


def version_option(command):
    """``--version``: print :func:`version_text` and exit, as click's version option does."""
    return click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
                        help="Show the version, the C kernels' build, libedgeseg and the backend libraries, "
                             "and exit.")(command)


@click.command("version")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def command(as_json: bool) -> None:
    """Print the edgeseg version (and git commit of a source checkout), Python, the C kernels'
    build (compiler, SIMD or portable paths, OpenMP), libedgeseg and the installed versions of every backend's library
    (onnxruntime, openvino, tensorrt, torch, ...) and numpy, and each runner plugin's package
    and version."""
    import json

    facts = installation()
    click.echo(json.dumps(facts, indent=2) if as_json else version_text(facts))
