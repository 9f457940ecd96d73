"""``edgeseg train --nproc N``: start the same training under torchrun in N local processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from edgeseg.errors import EdgesegError
from edgeseg.train.distributed import check_process_count


def torchrun_command(nproc: int, train_args: Sequence[str]) -> list[str]:
    """The torchrun command line that trains with ``train_args`` in ``nproc`` local processes.

    ``--standalone`` gives the run a private rendezvous on a free local port, so several runs
    on one machine do not meet each other.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "edgeseg", "train", *train_args]


def launch(nproc: int, train_args: Sequence[str]) -> None:
    """Run ``edgeseg train`` with ``train_args`` in ``nproc`` processes and wait for them.

    Refuses more processes than GPUs (on CUDA) or CPU cores before starting any. The
    processes' own messages reach the terminal; a failed run raises one error after them.
    """
    check_process_count(nproc)
    env = dict(os.environ)
    # torchrun would otherwise set one thread per process and say so; give each process its
    # share of the cores instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    code = subprocess.run(torchrun_command(nproc, train_args), env=env).returncode
    if code != 0:
        raise EdgesegError(f"training in {nproc} processes failed (torchrun exit status {code}); "
                           "the processes' messages are above")

