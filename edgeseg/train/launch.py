"""``edgeseg train --nproc N``: start the same training under torchrun in N local processes."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from edgeseg.errors import EdgesegError
from edgeseg.stopping import STOP_REPORTED_ABOVE, Terminated
from edgeseg.train.distributed import check_process_count

# torchrun waits 30 s for its processes after passing them a SIGTERM, then kills them
STOP_GRACE_S = 60.0
# the exit status of an edgeseg command stopped by SIGTERM / Ctrl-C, and what it is raised as here
STOPPED = {128 + signal.SIGTERM: Terminated, 128 + signal.SIGINT: KeyboardInterrupt}


def torchrun_command(nproc: int, train_args: Sequence[str]) -> list[str]:
    """The torchrun command line that trains with ``train_args`` in ``nproc`` local processes.

    ``--standalone`` gives the run a private rendezvous on a free local port, so several runs
    on one machine do not meet each other. torchrun runs through :func:`torchrun` below.
    """
    return [sys.executable, "-m", "edgeseg.train.launch", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "edgeseg", "train", *train_args]


def launch(nproc: int, train_args: Sequence[str]) -> None:
    """Run ``edgeseg train`` with ``train_args`` in ``nproc`` processes and wait for them.

    Refuses more processes than GPUs (on CUDA) or CPU cores before starting any. The
    processes' own messages reach the terminal; a failed run raises one error after them.
    Interrupted (Ctrl-C, SIGTERM), it stops the run through torchrun and waits for it.
    """
    check_process_count(nproc)
    env = dict(os.environ)
    # torchrun would otherwise set one thread per process and say so; give each process its
    # share of the cores instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env[STOP_REPORTED_ABOVE] = "1"  # a stop is this command's one line, not one per process
    # its own process group, so that a kill reaches its training processes too (killing torchrun
    # alone leaves them running); a stop reaches them through torchrun (_stop)
    run = subprocess.Popen(torchrun_command(nproc, train_args), env=env, start_new_session=True)
    try:
        code = run.wait()
    except BaseException:
        _stop(run)
        raise
    if code in STOPPED:  # the processes stopped on a signal (one sent to them, not to this process)
        raise STOPPED[code]
    if code != 0:
        raise EdgesegError(f"training in {nproc} processes failed (torchrun exit status {code}); "
                           "the processes' messages are above")


def _stop(run: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """Stop a torchrun run this process was waiting for: SIGTERM to torchrun, which passes it to
    each training process (they stop together between batches, ``last.pt`` whole) and waits for
    them; killed after ``grace_s`` or on a second interrupt. Killing torchrun at once (what
    ``subprocess.run`` does) would leave its training processes running, orphaned."""
    try:
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
        run.wait(timeout=grace_s)
    except BaseException:  # the grace ran out, or a second Ctrl-C: the whole group goes
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()


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
        raise


if __name__ == "__main__":
    torchrun()
