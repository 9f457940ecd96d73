"""`srun -n N edgeseg train --launcher slurm`: the processes of one run started by SLURM.

There is no SLURM here: srun is played by starting the N processes with the variables srun
sets for the tasks of a step (and nothing of torchrun's), as real gloo processes on the CPU.
"""

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.errors import EdgesegError
from edgeseg.train.slurm import PORT_BASE, PORT_SPAN, first_host, tasks_on_node, torchrun_variables

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402
from test_distributed import STEPS_TWO, _adam_steps, _env, _train_args, train_error_line  # noqa: E402

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def _step(task: int, tasks: int, job: int, nodelist: str = "localhost") -> dict[str, str]:
    """What srun -n TASKS sets for task TASK of a one-node step of job JOB (and sbatch for the job)."""
    return {"SLURM_JOB_ID": str(job), "SLURM_STEP_ID": "0", "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task),
            "SLURM_NODEID": "0", "SLURM_NTASKS": str(tasks), "SLURM_STEP_NUM_TASKS": str(tasks),
            "SLURM_STEP_NODELIST": nodelist, "SLURM_NODELIST": nodelist, "SLURM_STEP_TASKS_PER_NODE": str(tasks),
            "SLURM_TASKS_PER_NODE": str(tasks)}


def _job_with_a_free_port() -> int:
    """A job id whose rendezvous port (PORT_BASE + id mod PORT_SPAN) nothing here listens on."""
    for port in random.sample(range(PORT_BASE, PORT_BASE + PORT_SPAN), 200):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return 4 * PORT_SPAN + port - PORT_BASE
    pytest.skip("no free port in the rendezvous range")


def test_two_srun_tasks_train_one_run(tmp_path):
    """Two processes given srun's variables alone join one run: one DDP step an epoch over the
    30 training slices (one process would take four), rank 0 writes, both exit 0."""
    job, run = _job_with_a_free_port(), tmp_path / "run"
    base = {k: v for k, v in _env(tmp_path).items() if k not in TORCHRUN and not k.startswith("SLURM_")}
    tasks = [subprocess.Popen(_train_args(run, 1, "--launcher", "slurm"), cwd=tmp_path, env={**base, **_step(t, 2, job)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for t in range(2)]
    outputs = [task.communicate(timeout=600) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], [err[-2000:] for _, err in outputs]
    assert _adam_steps(run) == STEPS_TWO
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["processes"] == 2 and [row["epoch"] for row in metrics["history"]] == [1]
    assert "best val Dice" in outputs[0][0] and outputs[1][0] == ""
    val, _ = ddp_worker.one_process_validation(ddp_worker.config(tmp_path / "ref", 1), run / "last.pt")
    assert metrics["history"][0]["val_dice"] == val["dice"]


def test_srun_variables_map_to_torchrun_variables():
    env = {**_step(5, 8, 1234567, "gpu[07-08],gpu11"), "SLURM_NODEID": "1", "SLURM_LOCALID": "1",
           "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}
    assert torchrun_variables(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                                       "MASTER_ADDR": "gpu07", "MASTER_PORT": str(PORT_BASE + 4567)}
    # set by hand, MASTER_ADDR and MASTER_PORT win
    mapped = torchrun_variables({**env, "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29400"})
    assert (mapped["MASTER_ADDR"], mapped["MASTER_PORT"]) == ("10.0.0.7", "29400")


@pytest.mark.parametrize("nodelist, host", [("node[01-04,07],gpu5", "node01"), ("rack[1-2]-n[08-09],x", "rack1-n08"),
                                            ("n[5]", "n5"), ("a,b", "a"), ("host-[3-4]-ib", "host-3-ib")])
def test_the_first_host_of_a_slurm_host_list(nodelist, host):
    assert first_host(nodelist) == host


def test_tasks_per_node_lists():
    assert [tasks_on_node("2(x3),1", n) for n in range(4)] == [2, 2, 2, 1]
    with pytest.raises(EdgesegError, match="is not a node"):
        tasks_on_node("2(x3),1", 4)


@pytest.mark.parametrize("extra, env, message", [
    (["--launcher", "slurm"], {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"},
     "--launcher slurm: SLURM_NODEID, SLURM_STEP_NUM_TASKS, SLURM_STEP_NODELIST, SLURM_STEP_TASKS_PER_NODE not set"),
    (["--launcher", "slurm"], {**_step(0, 2, 7), "WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE is already set"),
    (["--launcher", "slurm", "--nproc", "2"], _step(0, 2, 7), "under --launcher slurm srun starts the processes"),
    ([], _step(1, 4, 7), "this is task 1 of 4 of an srun step"),
])
def test_bad_slurm_starts_are_one_line_errors(tmp_path, monkeypatch, extra, env, message):
    """A batch script's own step (SLURM_NTASKS of the job, SLURM_PROCID 0, no step variables)
    is refused rather than taken for rank 0 of 4; so is a task of a 4-task step started without
    --launcher slurm, which would train alone into the same folder as the other three."""
    for key in TORCHRUN:
        monkeypatch.delenv(key, raising=False)
    line = train_error_line(tmp_path, monkeypatch, extra, env)
    assert line.startswith("edgeseg: error: ") and message in line, line
    assert "WORLD_SIZE" not in os.environ or "WORLD_SIZE" in env
    assert not (tmp_path / "run").exists()
