"""The ``edgeseg`` command: a click group; each command lives in its own module."""

from __future__ import annotations

from edgeseg.cli.starting import started, starting

starting()

# from here on, imports stopped by a signal end the process with one line (edgeseg.cli.starting)
import os
import signal
import sys
import warnings

import click

from edgeseg.cli.version import version_option
from edgeseg.errors import EdgesegError
from edgeseg.progress import close_all
from edgeseg.stopping import Terminated, received, report_error_above, sigterm_stops, stop_line_wanted


def os_error_text(exc: OSError) -> str:
    """An operating-system failure (a full disk, a file too large, a folder not writable) as
    ``STRERROR: PATH``; the path is left out where the library that failed did not give it."""
    text = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{text}: {' -> '.join(paths)}" if paths else text


def memory_error_text(exc: MemoryError) -> str:
    """An allocation the machine refused (a volume larger than the memory left to the process),
    with what numpy was allocating where it says so."""
    detail = " ".join(str(exc).split()) or "an allocation failed"
    return (f"out of memory: {detail}; free memory or segment a smaller volume (the input limits: "
            f"--max-volume-bytes)")


def _stop_line(text: str) -> None:
    """The line that ends a failed or stopped command, at the start of a line of its own: on a
    terminal the line is cleared first, whatever a bar drew there (one drawn as the stop came,
    before close_all could know of it, included)."""
    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        terminal = False
    click.echo(("\r\x1b[K" if terminal else "") + text, err=True)


def _error_line(text: str) -> None:
    """``edgeseg: error: TEXT`` on one line; a training process that `edgeseg train --nproc`
    started leaves it to that command instead, which prints one line for all its processes."""
    text = " ".join(text.split())
    if not report_error_above(text):
        _stop_line(f"edgeseg: error: {text}")


class EdgesegGroup(click.Group):
    """Turns an EdgesegError, an OSError (the disk or the OS failed a read or a write:
    ``os_error_text``) or a MemoryError (``memory_error_text``) into one line on stderr and exit
    status 2, never a traceback; Ctrl-C and SIGTERM stop a command cleanly with one line and
    130 / 143 (commands that serve install their own handlers)."""

    def invoke(self, ctx: click.Context):
        from edgeseg.cli.logs import configure_logging, reset_logging

        # set up here, once for every command, so that --quiet means the same everywhere
        # (edgeseg.cli.logs); undone after, for whatever runs next in this process
        configure_logging()
        try:
            with sigterm_stops():
                return self._invoke(ctx)
        finally:
            reset_logging()

    def _invoke(self, ctx: click.Context):
        from edgeseg.cli.logs import held_warnings

        # Libraries warn about the inputs they parse (pydicom, nibabel, Pillow); those warnings,
        # and edgeseg's own under --quiet (edgeseg.cli.logs), are held back: after an error only
        # edgeseg's line is printed, after success each distinct warning is printed as one line,
        # never as Python's two-line warning format.
        with warnings.catch_warnings(record=True) as caught:
            try:
                try:
                    result = super().invoke(ctx)
                finally:
                    # a bar the failure left open is erased first: the line that says why
                    # must start a line of its own, not follow the bar's last frame
                    close_all()
            except Terminated:
                stopped = True
            except click.UsageError as exc:  # a bad option or argument: one line too, as any bad input
                if type(exc).__name__ == "NoArgsIsHelpError":  # a group called bare: its help, as click prints it
                    raise
                where = f"; see '{exc.ctx.command_path} -h'" if exc.ctx is not None else ""
                _error_line(f"{' '.join(exc.format_message().split()).removesuffix('.')}{where}")
                sys.exit(2)
            except BrokenPipeError:  # the reader of stdout went away (`edgeseg inspect B | head`): as a shell tool does
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush into the pipe
                sys.exit(128 + signal.SIGPIPE)
            except Exception as exc:
                if not received():  # else the stop landed in a library, which reported it as its own error
                    if not isinstance(exc, (EdgesegError, OSError, MemoryError)):
                        raise
                    # One line, whatever the message quotes (a library's multi-line text, a matrix).
                    text = os_error_text(exc) if isinstance(exc, OSError) else \
                        memory_error_text(exc) if isinstance(exc, MemoryError) else str(exc)
                    _error_line(text)
                    sys.exit(2)
                stopped = True
            except KeyboardInterrupt:
                if stop_line_wanted():
                    _stop_line("edgeseg: interrupted")
                sys.exit(130)
            else:
                # a SIGTERM whose Terminated was swallowed (raised inside a __del__, or caught by
                # a library such as uvicorn, which treats it as its Ctrl-C): still a stop
                stopped = received()
            held = held_warnings() + [f"edgeseg: warning: {w.category.__name__}: {' '.join(str(w.message).split())}"
                                      for w in caught]
        if stopped:  # out of the except block: the interrupted command's frames are released first
            if stop_line_wanted():
                _stop_line("edgeseg: stopped (SIGTERM)")
            sys.exit(128 + signal.SIGTERM)
        for line in dict.fromkeys(held):
            click.echo(line, err=True)
        return result


@click.group(cls=EdgesegGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option
def cli() -> None:
    """edgeseg: U-Net CT segmentation from training to a scanner-side device."""


def _register() -> None:
    from edgeseg.cli import (bench, compare, cv, data, evaluate, export, gate, inspect, listen, models, predict, sdk,
                             serve, sweep, train, triton, version)

    for module in (data, models, train, cv, evaluate, compare, export, gate, inspect, predict, bench, serve, triton,
                   listen, sweep, sdk, version):
        cli.add_command(module.command)
    cli.add_command(bench.serve_command)


_register()
started()
