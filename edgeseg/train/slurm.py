"""``srun -n N edgeseg train --launcher slurm ...``: the processes of one run started by SLURM.

torch.distributed reads its place in a run from torchrun's variables (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); srun sets its own. This maps srun's
step variables onto torchrun's, for the command that asks for it with ``--launcher slurm``.
Nothing is guessed from a SLURM environment without that option: a batch script's own step
also sets SLURM_NTASKS and SLURM_PROCID=0 (the job's task count, while the script itself is
one process), and taking it for rank 0 of N would wait for N-1 processes that never start.
The variables read are the *step's* (``SLURM_STEP_*``), which describe the tasks srun started.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from edgeseg.errors import EdgesegError

# what srun sets for each task of a step, and what is read from it
STEP_VARIABLES = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST",
                  "SLURM_STEP_TASKS_PER_NODE")
# the rendezvous port without MASTER_PORT: PORT_BASE + SLURM_JOB_ID mod PORT_SPAN, the same for
# every task of the job without any exchange between them
PORT_BASE, PORT_SPAN = 20000, 10000
HOW = "start it as srun -n N edgeseg train --launcher slurm ..., or run torchrun under srun (one task per node)"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: ``node[01-04,07],gpu5`` gives ``node01``, and
    ``rack[1-2]-n[08-09]`` gives ``rack1-n08`` (each bracket's first entry, its zero padding kept)."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):  # the first entry ends at the first comma outside brackets
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = i
            break
    host = re.sub(r"\[([^\]\-,]*)[^\]]*\]", r"\1", nodelist[:end].strip())
    if not host or any(c in host for c in "[], "):
        raise EdgesegError(f"SLURM_STEP_NODELIST {nodelist!r} is not a SLURM host list")
    return host


def tasks_on_node(tasks_per_node: str, node: int) -> int:
    """Node ``node``'s task count from SLURM's compressed form: ``2(x3),1`` is 2, 2, 2, 1."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            raise EdgesegError(f"SLURM_STEP_TASKS_PER_NODE {tasks_per_node!r} is not SLURM's N or N(xM) list")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if not 0 <= node < len(counts):
        raise EdgesegError(f"SLURM_NODEID {node} is not a node of SLURM_STEP_TASKS_PER_NODE {tasks_per_node!r}")
    return counts[node]


def torchrun_variables(env: Mapping[str, str]) -> dict[str, str]:
    """The torchrun variables of this srun task, from ``env`` (``--launcher slurm``): RANK from
    SLURM_PROCID, WORLD_SIZE from SLURM_STEP_NUM_TASKS, LOCAL_RANK from SLURM_LOCALID,
    LOCAL_WORLD_SIZE from SLURM_STEP_TASKS_PER_NODE at SLURM_NODEID, MASTER_ADDR (where not set)
    the step's first host, MASTER_PORT (where not set) from SLURM_JOB_ID. Refuses, in one line,
    a process srun did not start or one that torchrun started."""
    if "WORLD_SIZE" in env:
        raise EdgesegError("--launcher slurm maps srun's variables to torchrun's, but WORLD_SIZE is already set "
                           "(torchrun started this process?); under torchrun leave out --launcher slurm")
    missing = [name for name in STEP_VARIABLES if not env.get(name)]
    if missing:
        raise EdgesegError(f"--launcher slurm: {', '.join(missing)} not set; srun sets them for the tasks it starts "
                           f"(a batch script's own step is not one); {HOW}")
    try:
        numbers = {name: int(env[name]) for name in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID",
                                                     "SLURM_STEP_NUM_TASKS")}
        job = int(env.get("SLURM_JOB_ID", "0"))
    except ValueError:
        raise EdgesegError("--launcher slurm: SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_STEP_NUM_TASKS and "
                           "SLURM_JOB_ID must be integers (srun sets them)") from None
    return {
        "RANK": str(numbers["SLURM_PROCID"]),
        "WORLD_SIZE": str(numbers["SLURM_STEP_NUM_TASKS"]),
        "LOCAL_RANK": str(numbers["SLURM_LOCALID"]),
        "LOCAL_WORLD_SIZE": str(tasks_on_node(env["SLURM_STEP_TASKS_PER_NODE"], numbers["SLURM_NODEID"])),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(env["SLURM_STEP_NODELIST"]),
        "MASTER_PORT": env.get("MASTER_PORT") or str(PORT_BASE + job % PORT_SPAN),
    }


def check_not_an_unlaunched_task(env: Mapping[str, str]) -> None:
    """Refuse the second and later tasks of a multi-task srun step started without
    ``--launcher slurm`` (and not by torchrun): each would train a run of its own into the same
    folder. Task 0 is let through, as a single process: a shell inside an allocation may carry
    the step variables of the allocation while being one process."""
    if "WORLD_SIZE" in env:
        return
    try:
        task, tasks = int(env.get("SLURM_PROCID", "0")), int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    except ValueError:
        return
    if tasks > 1 and task > 0:
        raise EdgesegError(f"this is task {task} of {tasks} of an srun step, each of which would train alone into "
                           f"the same folder; pass --launcher slurm to train as one run of {tasks} processes "
                           "(or run torchrun under srun, one task per node)")
