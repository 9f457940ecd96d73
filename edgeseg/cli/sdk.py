"""``edgeseg sdk``: the paths and flags to build C and C++ programs against libedgeseg."""

from __future__ import annotations

import click


@click.command("sdk")
@click.option("--cflags", is_flag=True, help="Compiler flags (include folder).")
@click.option("--libs", is_flag=True, help="Linker flags (library folder, rpath, -ledgeseg).")
@click.option("--prefix", is_flag=True, help="The SDK folder (CMAKE_PREFIX_PATH for find_package(edgeseg)).")
@click.option("--cmake-dir", is_flag=True, help="The folder of edgeseg-config.cmake (edgeseg_DIR).")
@click.option("--pkgconfig-dir", is_flag=True, help="The folder of edgeseg.pc (PKG_CONFIG_PATH).")
def command(cflags: bool, libs: bool, prefix: bool, cmake_dir: bool, pkgconfig_dir: bool) -> None:
    """Print where libedgeseg is and how to build against it.

    With several options the values are printed on one line, in the order of the list below
    whatever order they are given in, e.g. ``cc app.c $(edgeseg sdk --cflags --libs)``; without
    options, a short summary. The SDK is
    looked for in the installed package, else in a source checkout's build/sdk; the environment
    variable EDGESEG_SDK names another folder, then the only one looked in.
    """
    from edgeseg import sdk

    root = sdk.sdk_prefix()
    values = {"cflags": (cflags, sdk.compile_flags), "libs": (libs, sdk.link_flags), "prefix": (prefix, lambda: str(root)),
              "cmake": (cmake_dir, lambda: str(sdk.cmake_dir())),
              "pkgconfig": (pkgconfig_dir, lambda: str(root / "lib" / "pkgconfig"))}
    chosen = [get() for wanted, get in values.values() if wanted]
    if chosen:
        click.echo(" ".join(chosen))
        return
    for name, (_, get) in values.items():
        click.echo(f"{name:<10} {get()}")
