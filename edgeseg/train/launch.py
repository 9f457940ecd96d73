"""``edgeseg train --nproc N``: start the same training under torchrun in N local processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.stopping import ERRORS_REPORTED_ABOVE, STOP_REPORTED_ABOVE, Terminated
from edgeseg.train.distributed import check_process_count

# torchrun waits 30 s for its processes after passing them a SIGTERM, then kills them
STOP_GRACE_S = 60.0
# the exit status of an edgeseg command stopped by SIGTERM / Ctrl-C, and what it is raised as here
STOPPED = {128 + signal.SIGTERM: Terminated, 128 + signal.SIGINT: KeyboardInterrupt}
# the exit statuses of a training process that stopped on a signal, by itself or as torchrun's
# agent stopped it after another process failed
STOP_CODES = {128 + signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGINT}
# what torchrun (run through :func:`torchrun`) leaves in the reports folder about failed processes
FAILURES_FILE = "failures.json"
# the process id of the `edgeseg train --nproc` command, for the torchrun it starts
LAUNCHER_PID = "EDGESEG_LAUNCHER_PID"


def torchrun_command(nproc: int, train_args: Sequence[str]) -> list[str]:
    """The torchrun command line that trains with ``train_args`` in ``nproc`` local processes.

    ``--standalone`` gives the run a private rendezvous on a free local port, so several runs
    on one machine do not meet each other. torchrun runs through :func:`torchrun` below.
    """
    return [sys.executable, "-m", "edgeseg.train.launch", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "edgeseg", "train", *train_args]


def launch(nproc: int, train_args: Sequence[str], out: str | None = None) -> None:
    """Run ``edgeseg train`` with ``train_args`` in ``nproc`` processes and wait for them.

    Refuses more processes than GPUs (on CUDA) or CPU cores before starting any. The
    processes' own messages reach the terminal, except their one-line errors: a failed run
    raises one error, the first failed process's line, or how that process ended (a signal, an
    exit status) where it printed none. Interrupted (Ctrl-C, SIGTERM), it stops the run through
    torchrun and waits for it. ``out`` (the run folder) is named in the error of a failed run.
    """
    check_process_count(nproc)
    env = dict(os.environ)
    # torchrun would otherwise set one thread per process and say so; give each process its
    # share of the cores instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env[STOP_REPORTED_ABOVE] = "1"  # a stop is this command's one line, not one per process
    with tempfile.TemporaryDirectory(prefix="edgeseg-train-") as reports:
        env[ERRORS_REPORTED_ABOVE] = reports  # so is an error
        env[LAUNCHER_PID] = str(os.getpid())
        # its own process group, so that Ctrl-C at a terminal reaches this process alone, which
        # stops the run through torchrun (_stop)
        run = subprocess.Popen(torchrun_command(nproc, train_args), env=env, start_new_session=True)
        try:
            code = run.wait()
        except BaseException:
            _stop(run, reports)
            raise
        if code < 0:  # torchrun itself was killed; its training processes, orphaned, would train on
            _stop_processes(reports)
        if code in STOPPED:  # the processes stopped on a signal (one sent to them, not to this process)
            raise STOPPED[code]
        if code != 0:
            raise EdgesegError(failure_text(Path(reports), nproc, code, out))


def failure_text(reports: Path, nproc: int, code: int, out: str | None = None) -> str:
    """The one line of a failed run from what its processes and torchrun left in ``reports``:
    the first failed process's error (once, however many processes gave it), else how it
    ended, and where the run stands."""
    failures = {}
    with contextlib.suppress(OSError, ValueError):
        failures = {int(r): f for r, f in json.loads((reports / FAILURES_FILE).read_text()).items()}
    lines = {}
    for path in reports.glob("rank-*.txt"):
        with contextlib.suppress(OSError, ValueError):
            lines[int(path.stem.removeprefix("rank-"))] = path.read_text(encoding="utf-8").strip()
    first = _first_failure(failures, lines)
    kept = f"{out}/last.pt" if out else "last.pt"
    if first is None and code < 0:
        return (f"torchrun, which ran the {nproc} training processes, was killed by {_signal_name(-code)}; they were "
                f"stopped; {kept} holds the last finished epoch (--resume continues from it)")
    if first is None:
        return f"training in {nproc} processes failed (torchrun exit status {code}); the processes' messages are above"
    if first in lines:
        text = lines[first]
        return text if set(lines.values()) == {text} else f"rank {first}: {text}"
    ended = failures[first]
    if ended["exitcode"] < 0:
        name = _signal_name(-ended["exitcode"])
        how = f"was killed by {name}" + (" (the kernel's out-of-memory killer sends it too)" if name == "SIGKILL" else "")
    else:
        how = f"failed with exit status {ended['exitcode']}; its messages are above"
    return (f"training process rank {first} of {nproc} {how}; the others were stopped; {kept} holds the last "
            "finished epoch (--resume continues from it)")


def _first_failure(failures: dict[int, dict], lines: dict[int, str]) -> int | None:
    """The process whose failure ended the run: not one that torchrun stopped because of it
    (exit 143, 130, or killed by SIGTERM / SIGINT), the earliest, then the lowest rank."""
    causes = {r: f for r, f in failures.items() if f["exitcode"] not in STOP_CODES} or failures
    if causes:
        return min(causes, key=lambda r: (causes[r].get("timestamp", 0), r not in lines, r))
    return min(lines) if lines else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_processes(reports: str) -> list[int]:
    """The processes of the run whose reports folder is ``reports`` (its training processes and
    their DataLoader workers, which have it in their environment). torchrun starts each training
    process in a session of its own, so neither torchrun's process group nor, once torchrun has
    died, the process tree leads to them. Empty where there is no ``/proc``."""
    marker = f"{ERRORS_REPORTED_ABOVE}={reports}".encode()
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    environ = f.read()
            except OSError:  # gone, or another user's
                continue
            if marker in environ.split(b"\0"):
                found.append(int(entry.name))
    return found


def _stop_processes(reports: str, grace_s: float = STOP_GRACE_S) -> None:
    """Stop the run's processes left after torchrun ended (:func:`run_processes`): SIGTERM, which
    the training processes take together between batches, then SIGKILL after ``grace_s``."""
    deadline, sig = time.monotonic() + grace_s, signal.SIGTERM
    while pids := run_processes(reports):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.1)
        sig = signal.SIGKILL if time.monotonic() >= deadline else 0  # 0: only look again


def _stop(run: subprocess.Popen, reports: str, grace_s: float = STOP_GRACE_S) -> None:
    """Stop a torchrun run this process was waiting for: SIGTERM to torchrun, which passes it to
    each training process (they stop together between batches, ``last.pt`` whole) and waits for
    them; after ``grace_s`` or on a second interrupt torchrun and the training processes are
    killed. Killing torchrun alone (what ``subprocess.run`` does) would leave its training
    processes running, orphaned."""
    try:
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
        run.wait(timeout=grace_s)
    except BaseException:  # the grace ran out, or a second Ctrl-C: all of the run goes now
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        _stop_processes(reports, grace_s=0)
        return
    _stop_processes(reports)


def torchrun() -> None:
    """torchrun (``torch.distributed.run``) with its command line, except that a run stopped by a
    signal ends with that signal's exit status (143 for SIGTERM, 130 for Ctrl-C) rather than a
    traceback: torchrun's own stop (it passes the signal to the training processes and waits for
    them), and a stop that reached the training processes alone (they stop together; torchrun
    would report them as failed). A real failure keeps torchrun's report."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    # torchrun's agent logs each step of passing a stop on ("Received 15 death signal", "Sending
    # process N closing signal SIGTERM") as warnings; a requested stop is reported in one line
    # by the command. A failure still gets torchrun's report (logged as an error).
    for name in ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if os.environ.get(ERRORS_REPORTED_ABOVE):
        # its "failed (exitcode: N) local_rank: R" is what the launching command's one line says
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    _stop_with_launcher()
    try:
        main()
    except SignalException as exc:
        sys.exit(128 + int(exc.sigval))
    except ChildFailedError as exc:
        # a process stopped by edgeseg exits 143 / 130; one that got torchrun's SIGTERM after it
        # had left edgeseg's handler (while exiting) reads as killed by the signal, -15
        term, interrupt = {128 + signal.SIGTERM, -signal.SIGTERM}, {128 + signal.SIGINT, -signal.SIGINT}
        codes = {f.exitcode for f in exc.failures.values()}
        if codes and codes <= term | interrupt:
            sys.exit(128 + (signal.SIGTERM if codes & term else signal.SIGINT))
        reports = os.environ.get(ERRORS_REPORTED_ABOVE)
        if not reports:
            raise
        # the launching command reports the failure in one line (failure_text) instead of
        # torchrun's traceback and its table of failed processes
        (Path(reports) / FAILURES_FILE).write_text(json.dumps({
            str(rank): {"exitcode": f.exitcode, "pid": f.pid, "timestamp": f.timestamp,
                        "signal": f.signal_name() if f.exitcode < 0 else None}
            for rank, f in exc.failures.items()}))
        sys.exit(1)


def _stop_with_launcher() -> None:
    """Have the kernel send this torchrun a SIGTERM when the `edgeseg train --nproc` command that
    started it dies (``kill -9``), so that it stops its training processes instead of leaving
    them training, unseen, with nothing to report their end. Linux only."""
    launcher = os.environ.get(LAUNCHER_PID)
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(launcher):  # it died before the kernel was asked
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    torchrun()
