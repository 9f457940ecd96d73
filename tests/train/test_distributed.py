"""Training under ``torchrun --nproc-per-node 2`` (gloo on the CPU) on a tiny phantom.

One torchrun run (tests/train/ddp_worker.py) takes one DDP gradient and then trains two epochs
of one step each; ``edgeseg train --nproc 2 --resume`` then re-trains the second epoch from the
copy of the run taken after the first, and the same copy, and a one-process run, are resumed
with the other number of processes. The references are plain single-process PyTorch on the
union of the two processes' batches. Batch norm: each process normalises its own 8 slices (there
is no SyncBatchNorm on the CPU), so the reference runs the model on each process's slices
separately, as that is the only difference a union-batch forward would have, and joins the
logits before the loss. Running statistics are not compared: DDP keeps rank 0's.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeseg.models import ModelConfig, build_model
from edgeseg.train.distributed import ShardedShuffle, check_process_count
from edgeseg.errors import EdgesegError
from edgeseg.models.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402


def _env(tmp: Path) -> dict:
    # torchrun leaves a torchelastic_* log folder in the temporary folder; keep it in the test's.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}


def _run(args: list[str], cwd: Path) -> None:
    done = subprocess.run(args, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
          str(Path(ddp_worker.__file__)), str(out), "2"], out)
    # Resuming tests each start from their own copy of the run as it was after epoch 1.
    shutil.copytree(out / "after1", out / "after1-pristine")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return out, ranks


@pytest.fixture
def one_thread():
    """Compute the reference in one thread, as each torchrun process does: oneDNN picks other
    convolution blocking for another thread count, and the gradients then differ by up to 1e-2
    of their largest, enough to flip the sign of Adam's first step on many weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference_model(cfg):
    # The memory format training uses.
    torch.manual_seed(cfg.seed)
    return build_model(ModelConfig(num_classes=2, base=cfg.base, depth=cfg.depth)).to(memory_format=torch.channels_last)


def _union_loss(model, shards):
    """Plain DiceCE on the union batch, each shard normalised by its own batch statistics."""
    from edgeseg.train.losses import DiceCELoss

    logits = torch.cat([model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)) for x, _ in shards])
    labels = torch.cat([torch.from_numpy(y).long() for _, y in shards])
    return DiceCELoss()(logits, labels)


def test_the_two_processes_see_disjoint_samples(two_processes):
    _, ranks = two_processes
    for epoch in ("1", "2"):
        (a,), (b,) = ranks[0]["batches"][epoch], ranks[1]["batches"][epoch]
        assert len(a) == len(b) == 8 and not set(a) & set(b)
        assert all(0 <= i < 30 for i in a + b)
    assert ranks[0]["batches"]["1"] != ranks[0]["batches"]["2"]


def test_gradient_is_the_mean_over_processes_of_the_union_batch_loss(two_processes, one_thread):
    out, _ = two_processes
    cfg = ddp_worker.config(out / "ref", 1)
    train_set = ddp_worker.prepare(cfg)["train"]
    model = _reference_model(cfg)
    shards = [(train_set.images[8 * r : 8 * r + 8], train_set.labels[8 * r : 8 * r + 8]) for r in range(2)]
    _union_loss(model, shards).backward()
    ddp_grads = torch.load(out / "grads.pt")
    for name, p in model.named_parameters():
        # Float sums in another order: within 1e-4 of the tensor's largest gradient. Per-process
        # Dice instead of pooled, or summed instead of averaged gradients, miss by 10-100 %.
        scale = float(p.grad.abs().max())
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-4, atol=1e-4 * scale, msg=name)


def test_weights_after_one_step_equal_one_process_on_the_union_batch(two_processes, one_thread):
    out, ranks = two_processes
    cfg = ddp_worker.config(out / "ref", 1)
    train_set = ddp_worker.prepare(cfg)["train"]
    model = _reference_model(cfg)
    idx = [np.array(ranks[r]["batches"]["1"][0]) for r in range(2)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    _union_loss(model, [(train_set.images[i], train_set.labels[i]) for i in idx]).backward()
    optimizer.step()
    trained = read_checkpoint(out / "after1" / "last.pt")["state_dict"]
    # Adam's first step moves each weight by lr * g / (|g| + eps), about lr * sign(g): where a
    # gradient is float noise around zero its sign is noise too, so those few weights (under
    # 1 %) are left out; the gradients themselves are compared in the test above.
    settled = total = 0
    for name, p in model.named_parameters():
        sure = p.grad.abs() > 1e-3 * p.grad.abs().max()
        torch.testing.assert_close(trained[name][sure], p.detach()[sure], rtol=1e-5, atol=1e-6, msg=name)
        settled, total = settled + int(sure.sum()), total + p.numel()
    assert settled > 0.99 * total


def test_only_rank_0_writes_the_run(two_processes):
    out, ranks = two_processes
    run = str((out / "run").resolve())
    mine = [p for p in ranks[0]["writes"] if p.startswith(run)]
    for name in ("best.pt", "last.pt", "metrics.json", "metrics.csv", "curves.png", "split.json"):
        assert f"{run}/{name}" in mine, name
    assert [p for p in ranks[1]["writes"] if p.startswith(run)] == []
    history = json.loads((out / "run" / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]


def test_a_process_without_a_validation_case_leaves_the_validation_unchanged(two_processes):
    """One validation case for two processes: rank 1 predicts none; the recorded figures are
    still one process's validation of the saved weights, bit for bit."""
    out, _ = two_processes
    history = json.loads((out / "run" / "metrics.json").read_text())["history"]
    val, _ = ddp_worker.one_process_validation(ddp_worker.config(out / "ref", 1), out / "run" / "last.pt")
    assert len(val["per_case"]) == 1
    assert (history[-1]["val_loss"], history[-1]["val_dice"]) == (val["loss"], val["dice"])


def _train_args(out: Path, epochs: int, *extra: str) -> list[str]:
    """``edgeseg train`` with the options of ddp_worker.config."""
    return [sys.executable, "-m", "edgeseg", "train", "--data", ddp_worker.PHANTOM, "--out", str(out), "--size", "64",
            "--base", "4", "--depth", "2", "--epochs", str(epochs), "--batch-size", "8", "--lr", "0.005",
            "--window=-200,300", "--amp", "off", "--val-fraction", "0.2", "--test-fraction", "0.2", "--no-augment",
            "--foreground-share", "0", "--memory-format", "channels-last", "--quiet", *extra]


def _after_first_epoch(out: Path, name: str) -> Path:
    return Path(shutil.copytree(out / "after1-pristine", out / name))


def _adam_steps(run: Path) -> int:
    steps = {int(s["step"]) for s in read_checkpoint(run / "last.pt")["optimizer"]["state"].values()}
    assert len(steps) == 1, steps
    return steps.pop()


def _lr(step: int, total: int, warmup: int, peak: float = 0.005) -> float:
    """The loop's schedule written out: linear warm-up, then cosine decay to 1 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))))


# The phantom's 30 training slices in batches of 8 per process: one process takes 4 steps an
# epoch (ceil(30 / 8)), two processes 1 (floor(30 / 16)).
STEPS_ONE, STEPS_TWO = 4, 1


def test_resumed_two_process_run_continues_the_history_exactly(two_processes):
    out, _ = two_processes
    run = _after_first_epoch(out, "resume-2-of-2")
    _run(_train_args(run, 2, "--resume", "--nproc", "2"), out)
    resumed = json.loads((run / "metrics.json").read_text())["history"]
    straight = json.loads((out / "run" / "metrics.json").read_text())["history"]
    assert resumed[0] == straight[0]
    for key in ("train_loss", "val_loss", "val_dice", "lr"):
        assert resumed[1][key] == pytest.approx(straight[1][key], rel=1e-6, abs=1e-7), key


def test_two_process_run_resumes_in_one_process(two_processes):
    """``--resume`` with another N: the optimiser state carries on and the schedule follows the
    new steps per epoch."""
    out, _ = two_processes
    run = _after_first_epoch(out, "resume-1-of-2")
    assert _adam_steps(run) == STEPS_TWO
    _run(_train_args(run, 2, "--resume"), out)
    resumed = json.loads((run / "metrics.json").read_text())["history"]
    straight = json.loads((out / "run" / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in resumed] == [1, 2] and resumed[0] == straight[0]
    assert _adam_steps(run) == STEPS_TWO + STEPS_ONE
    last = 2 * STEPS_ONE - 1
    assert resumed[1]["lr"] == pytest.approx(_lr(last, 2 * STEPS_ONE, STEPS_ONE))
    assert resumed[1]["lr"] != pytest.approx(straight[1]["lr"])
    assert math.isfinite(resumed[1]["train_loss"]) and resumed[1]["train_loss"] != straight[1]["train_loss"]


def test_one_process_run_resumes_in_two_processes(two_processes):
    out, _ = two_processes
    run = out / "resume-2-of-1"
    _run(_train_args(run, 1), out)
    first = json.loads((run / "metrics.json").read_text())["history"]
    assert _adam_steps(run) == STEPS_ONE
    assert json.loads((run / "metrics.json").read_text())["config"]["processes"] == 1
    _run(_train_args(run, 2, "--resume", "--nproc", "2"), out)
    resumed = json.loads((run / "metrics.json").read_text())["history"]
    # --batch-size is per process: the record says how many there were (compare lists it when it differs)
    assert json.loads((run / "metrics.json").read_text())["config"]["processes"] == 2
    assert [row["epoch"] for row in resumed] == [1, 2] and resumed[0] == first[0]
    assert _adam_steps(run) == STEPS_ONE + STEPS_TWO
    assert resumed[1]["lr"] == pytest.approx(_lr(2 * STEPS_TWO - 1, 2 * STEPS_TWO, STEPS_TWO))


def test_sharded_shuffle_covers_an_epoch_once_across_processes():
    shares = [list(ShardedShuffle(37, 4, rank, 3, seed=5).batches(2)) for rank in range(3)]
    assert {len(s) for s in shares} == {37 // 12}
    seen = np.concatenate([b for s in shares for b in s])
    assert len(seen) == len(set(seen.tolist())) == 36
    alone = list(ShardedShuffle(38, 4, 0, 1, seed=5).batches(2))
    assert sorted(np.concatenate(alone).tolist()) == list(range(38))
    # A trailing batch of one is dropped (its batch norm statistics would be noise).
    assert len(np.concatenate(list(ShardedShuffle(37, 4, 0, 1, seed=5).batches(2)))) == 36


def test_more_processes_than_cores_is_refused():
    with pytest.raises(EdgesegError, match=r"--nproc 9999 is more than the \d+ CPU cores"):
        check_process_count(9999, cuda=False)


def test_nproc_larger_than_the_machine_is_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "edgeseg", "train", "--nproc", "9999", "--out", str(tmp_path / "r")],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("edgeseg: error: --nproc 9999 is more than the")


@pytest.mark.parametrize("extra, env, message", [
    (["--sync-bn"], {}, "--sync-bn needs CUDA"),
    (["--nproc", "2"], {"WORLD_SIZE": "2", "RANK": "0"}, "--nproc starts torchrun itself"),
    (["--nproc", "0"], {}, "--nproc must be >= 1, got 0"),
])
def test_bad_process_options_are_one_line_errors(tmp_path, monkeypatch, extra, env, message):
    if torch.cuda.is_available() and "--sync-bn" in extra:
        pytest.skip("--sync-bn is valid on CUDA")
    assert train_error_line(tmp_path, monkeypatch, extra, env).startswith(f"edgeseg: error: {message}")
    assert not (tmp_path / "run" / "last.pt").exists()


def train_error_line(tmp_path: Path, monkeypatch, extra: list[str], env: dict[str, str]) -> str:
    """The one line of a tiny `edgeseg train` with ``extra`` options in ``env`` that fails with exit 2."""
    from tests.guarded_cli import GuardedCliRunner

    from edgeseg.cli.main import cli

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = GuardedCliRunner().invoke(cli, ["train", "--data", ddp_worker.PHANTOM, "--size", "64", "--base", "4", "--depth", "2",
                                             "--epochs", "1", "--out", str(tmp_path / "run"), *extra])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("data, labels, message", [
    ("phantom:cases=1,size=32,slices=4", "liver=1",
     "phantom:cases=1,size=32,slices=4 holds 1 case(s); training needs at least 2 (train and validation)"),
    ("phantom:cases=3,size=32,slices=4", "liver=1,tumour=7",
     "no training slice of phantom:cases=3,size=32,slices=4 holds tumour (value 7); check --labels"),
    ("phantom:cases=3,size=32,slices=1", "liver=1",
     "phantom:cases=3,size=32,slices=1 gives 1 training slice(s), fewer than the 2 processes that would share them; "
     "use --nproc 1 or fewer"),
])
def test_data_a_run_cannot_train_on_is_one_line_before_torchrun_starts(tmp_path, data, labels, message,
                                                                       assert_one_line_error):
    """Each process used to print the refusal, followed by torchrun's failure report; and the
    run folder the processes made (their slice store) is gone again."""
    done = subprocess.run([sys.executable, "-m", "edgeseg", "train", "--data", data, "--labels", labels, "--size", "32",
                           "--base", "4", "--depth", "2", "--epochs", "1", "--nproc", "2", "--quiet",
                           "--out", str(tmp_path / "run")],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert_one_line_error(done, message)
    assert not (tmp_path / "run").exists()
