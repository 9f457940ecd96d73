"""Logging set-up of every command: one readable line per event on stderr, and what ``--quiet``
leaves of them.

The rule, the same for every command (docs/index.md, "What a command writes to the terminal or a
log"): info lines are printed as they happen, unless ``--quiet``; a warning is always printed, as
one line ``edgeseg: warning: ...``, as it happens, or, with ``--quiet``, held and printed by
the command group once the command has succeeded (:func:`held_warnings`), so that a quiet command
that fails prints its error line alone. Records of ERROR and above are logged by the servers
only, which keep running after them: they are written as they happen, as plain lines.
"""

from __future__ import annotations

import logging
import sys

from edgeseg.progress import write_line

WARNING_PREFIX = "edgeseg: warning: "


class _LineHandler(logging.StreamHandler):
    """Writes each record through :func:`edgeseg.progress.write_line`, so that a record logged
    while a bar is live on a terminal does not land in the middle of the bar; holds back warnings
    and drops info lines once ``quiet`` is set."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.quiet = False
        self.held: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno < logging.WARNING:
                if not self.quiet:
                    write_line(self.format(record))
            elif record.levelno < logging.ERROR:
                # one line whatever the message quotes (a library's multi-line text)
                line = WARNING_PREFIX + " ".join(record.getMessage().split())
                if self.quiet:
                    self.held.append(line)
                else:
                    write_line(line)
            else:
                write_line(self.format(record))
        except Exception:  # noqa: BLE001 - as logging.StreamHandler: a failed log line is reported, not raised
            self.handleError(record)


class _LibraryHandler(logging.Handler):
    """Python's last-resort handler while a command runs: a library that logs without a handler
    of its own (Pillow's TIFF reader logs a corrupt header at ERROR before it raises) would print
    a bare line of its own; its records are held as library warnings are, one line each, shown
    after the command succeeds and never after an error line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.held: dict[str, None] = {}  # distinct lines only: a server may run for months

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.held[f"{WARNING_PREFIX}{record.name}: {' '.join(record.getMessage().split())}"] = None
        except Exception:  # noqa: BLE001 - as logging.StreamHandler: a failed log line is reported, not raised
            self.handleError(record)


_LAST_RESORT = logging.lastResort


def _installed() -> _LineHandler | None:
    handlers = logging.getLogger("edgeseg").handlers
    return handlers[0] if len(handlers) == 1 and isinstance(handlers[0], _LineHandler) else None


def configure_logging(verbose: bool = False) -> None:
    """Send edgeseg's log records to stderr as plain lines (the command group does this before
    each command)."""
    handler = _LineHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("edgeseg")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    logging.lastResort = _LibraryHandler()


def quiet_logging() -> None:
    """``--quiet``: from now on drop info lines and hold warnings back for :func:`held_warnings`.
    Nothing to do where the command runs without the command group (a library or test calling
    the command itself), which set up no handler."""
    handler = _installed()
    if handler is not None:
        handler.quiet = True


def held_warnings() -> list[str]:
    """The ``edgeseg: warning: ...`` lines ``--quiet`` held back so far, in order."""
    handler = _installed()
    library = logging.lastResort.held if isinstance(logging.lastResort, _LibraryHandler) else []
    return (list(handler.held) if handler is not None else []) + list(library)


def reset_logging() -> None:
    """edgeseg's logger as a fresh process has it (no handler, records passed up): a command that
    runs in the same process after another (a test, an app calling the CLI) must not log through
    the handler the earlier one set up, which writes to whatever stderr is now, --quiet or not."""
    root = logging.getLogger("edgeseg")
    root.handlers[:] = []
    root.setLevel(logging.NOTSET)
    root.propagate = True
    logging.lastResort = _LAST_RESORT
