"""Logging set-up shared by the commands: one readable line per event on stderr."""

from __future__ import annotations

import logging
import sys

from edgeseg.progress import write_line


class _LineHandler(logging.StreamHandler):
    """Writes each record through :func:`edgeseg.progress.write_line`, so that a record logged
    while a bar is live on a terminal does not land in the middle of the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(self.format(record))
        except Exception:  # noqa: BLE001 - as logging.StreamHandler: a failed log line is reported, not raised
            self.handleError(record)


def configure_logging(verbose: bool = False) -> None:
    """Send edgeseg's log records to stderr as plain lines."""
    handler = _LineHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("edgeseg")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def reset_logging() -> None:
    """edgeseg's logger as a fresh process has it (no handler, records passed up): a command that
    runs in the same process after another (a test, an app calling the CLI) must not log through
    the handler the earlier one set up, which writes to whatever stderr is now, --quiet or not."""
    root = logging.getLogger("edgeseg")
    root.handlers[:] = []
    root.setLevel(logging.NOTSET)
    root.propagate = True


def silence_logging() -> None:
    """Drop edgeseg's log records (``--quiet``: no log lines). Without a handler of its own, a
    warning would still reach stderr through Python's last-resort handler, before the command's
    one error line; that line is the CLI's own and stays."""
    root = logging.getLogger("edgeseg")
    root.handlers[:] = [logging.NullHandler()]
    root.propagate = False
