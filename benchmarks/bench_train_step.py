"""Training step cost: edgeseg's step against a plain PyTorch loop on the same model, batch and loss.

edgeseg's step is the training loop's own (``edgeseg.train.loop``): the foreground-aware
sampler, reading the batch from the slice store, augmentation (in this process: the loader runs
without workers, so process CPU time holds all of it), the learning-rate schedule, Dice +
cross-entropy, AdamW, mixed-precision bookkeeping, in the memory format the loop chooses. The
plain loop is what a user would write: slices already in one float32 tensor, random left-right
and up-down flips, the same loss and optimiser, ``loss.backward()`` and ``step()``, once in
PyTorch's default memory format and once channels-last (on the CPU the two differ more than
any bookkeeping does). All train the same architecture from the same initial weights on the
same phantom slices, in one process, in alternating rounds of steps so that load on the
machine hits them alike; the ratios of the median step times are the figures (1.0 = no overhead).

    python benchmarks/bench_train_step.py --size 256 --batch 8 --steps 2 --rounds 3 --threads 1 --cpu-time
    python benchmarks/bench_train_step.py --profile    # where the time goes, per step kind
    python benchmarks/bench_train_step.py --parts --threads 1   # sampling and augmentation alone
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeseg.models import ModelConfig, build_model
from edgeseg.train.config import TrainConfig
from edgeseg.train.distributed import ProcessPlace
from edgeseg.train.config import MEMORY_FORMATS
from edgeseg.train.loop import _LoopState, foreground_batches, memory_format_for, prepare
from edgeseg.train.memory_format import to_memory_format
from edgeseg.train.losses import DiceCELoss


def edgeseg_state(cfg: TrainConfig, data: dict) -> _LoopState:
    """The training loop's state for ``cfg`` (its default sampler, no loader workers, the memory
    format ``--memory-format`` gives: with auto, the loop's own probe), model initialised from
    ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    model_config = ModelConfig(name=cfg.model, num_classes=2, base=cfg.base, depth=cfg.depth)
    model = build_model(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    place = ProcessPlace()
    sampler = foreground_batches(data["train"], place, cfg)
    layout = memory_format_for(cfg, model, model_config, torch.device("cpu"), place)
    to_memory_format(model, optimizer, layout["chosen"])
    return _LoopState(cfg, model, model_config, data["spec"], optimizer, torch.device("cpu"), data["train"],
                      data["val"], data["split"], None, sampler, place, layout)


def loader_batches(state: _LoopState):
    """The (images, labels) batches edgeseg's loop trains on, epoch after epoch."""
    for epoch in range(1, 10**6):
        state.batches.set_epoch(epoch)
        yield from state.loader


def planned_rows(state: _LoopState, count: int):
    """The store rows of the loop's first ``count`` batches."""
    for epoch in range(1, 10**6):
        state.batches.set_epoch(epoch)
        for _, rows in state.batches:
            if count == 0:
                return
            count -= 1
            yield rows


def in_memory(train_set) -> tuple[np.ndarray, np.ndarray]:
    """Every training slice read from the store into one float32 array, with its labels."""
    return train_set.store.take(train_set.rows)


class PlainLoop:
    """A plain PyTorch training step: in-memory tensors, flips, DiceCE, AdamW.

    ``channels_last`` stores weights and batches in the memory format edgeseg trains in; the
    plain default (contiguous NCHW) is what a loop written without it gets.
    """

    def __init__(self, cfg: TrainConfig, data: dict, channels_last: bool = False) -> None:
        torch.manual_seed(cfg.seed)
        self.model = build_model(ModelConfig(name=cfg.model, num_classes=2, base=cfg.base, depth=cfg.depth))
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.format)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        images, labels = in_memory(data["train"])
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels).long()
        self.loss_fn = DiceCELoss()
        self.batch = cfg.batch_size
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def step(self) -> float:
        idx = torch.randint(len(self.images), (self.batch,), generator=self.gen)
        x, y = self.images[idx], self.labels[idx]
        if torch.rand(1, generator=self.gen) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if torch.rand(1, generator=self.gen) < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        self.model.train()
        loss = self.loss_fn(self.model(x.contiguous(memory_format=self.format)), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def edgeseg_steps(state: _LoopState, batches, count: int, first_step: int) -> None:
    state.replica.train()
    for i in range(count):
        images, labels = next(batches)
        state._step(images, labels, first_step + i)


def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], str]:
    """Seconds per step of each loop in ``rounds`` alternating rounds of ``steps``, and the
    memory format edgeseg's loop trained in."""
    cfg = TrainConfig(data=f"phantom:cases=4,seed=0,size={args.size},slices={args.slices}", out="unused",
                      size=args.size, base=args.base, depth=args.depth, batch_size=args.batch,
                      epochs=1000, amp=args.amp, fractions=(0.5, 0.25, 0.25), seed=0, workers=0,
                      cache=str(args.cache), memory_format=args.memory_format)
    data = prepare(cfg)
    state = edgeseg_state(cfg, data)
    plains = {"plain": PlainLoop(cfg, data), "plain-cl": PlainLoop(cfg, data, channels_last=True)}
    batches = loader_batches(state)
    edgeseg_steps(state, batches, 1, 0)  # first steps allocate; not timed
    for plain in plains.values():
        plain.step()
    times: dict[str, list[float]] = {"edgeseg": [], **{name: [] for name in plains}}
    done = 1
    for _ in range(args.rounds):
        started = _clock(args)
        edgeseg_steps(state, batches, args.steps, done)
        times["edgeseg"].append((_clock(args) - started) / args.steps)
        done += args.steps
        for name, plain in plains.items():
            started = _clock(args)
            for _ in range(args.steps):
                plain.step()
            times[name].append((_clock(args) - started) / args.steps)
        print("round: " + ", ".join(f"{k} {v[-1]:.3f} s/step" for k, v in times.items()), flush=True)
    if args.profile:
        profile(state, batches, plains["plain-cl"], done)
    return times, state.layout["chosen"]


def parts(args: argparse.Namespace) -> dict[str, float]:
    """CPU milliseconds of the parts of edgeseg's step around the model, per step."""
    cfg = TrainConfig(data=f"phantom:cases=4,seed=0,size={args.size},slices={args.slices}", out="unused",
                      size=args.size, base=args.base, depth=args.depth, batch_size=args.batch, epochs=1000, seed=0,
                      fractions=(0.5, 0.25, 0.25), workers=0, cache=str(args.cache),
                      memory_format="channels-last")  # not probed: only the steps around the model are timed
    state = edgeseg_state(cfg, prepare(cfg))
    gen, store, reps = torch.Generator().manual_seed(1), state.train_set.store, 50
    plans = list(planned_rows(state, reps))

    def sample(rows):
        images, labels = store.take(rows)
        return torch.from_numpy(images), torch.from_numpy(labels).long()

    out = {}
    for name, work in (("sampling", lambda idx: sample(idx)),
                       ("sampling + augmentation", lambda idx: state.augment(*sample(idx), gen)),
                       ("sampling + augmentation + channels-last copy",
                        lambda idx: state.augment(*sample(idx), gen)[0].contiguous(memory_format=torch.channels_last))):
        started = time.process_time()
        for i in range(reps):
            work(plans[i % len(plans)])
        out[name] = (time.process_time() - started) / reps * 1000
    return out


def _clock(args: argparse.Namespace) -> float:
    """Process CPU time with --cpu-time (steady on a loaded machine at one thread), else wall time."""
    return time.process_time() if args.cpu_time else time.perf_counter()


def profile(state: _LoopState, batches, plain: PlainLoop, done: int) -> None:
    """Print torch.profiler's operator table for two steps of each loop."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for name, run in (("edgeseg", lambda: edgeseg_steps(state, batches, 2, done)),
                      ("plain", lambda: [plain.step() for _ in range(2)])):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        print(f"--- {name}: two steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--base", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--slices", type=int, default=24, help="slices per phantom case (4 cases, 2 train)")
    parser.add_argument("--steps", type=int, default=4, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time steps in process CPU seconds instead of wall seconds (use with --threads 1 on a "
                             "machine other jobs load)")
    parser.add_argument("--parts", action="store_true",
                        help="only measure the CPU milliseconds of sampling and augmentation per step")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables")
    parser.add_argument("--memory-format", default="auto", choices=MEMORY_FORMATS,
                        help="edgeseg's loop's layout (auto: its probe decides, as in edgeseg train)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="slice-store folder (default: a temporary one, removed at the end)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-step-") as tmp:
        args.cache = args.cache or Path(tmp) / "slice-store"
        return run(args)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.parts:
        for name, ms in parts(args).items():
            print(f"{name}: {ms:.2f} CPU ms/step ({torch.get_num_threads()} threads)")
        return 0
    times, edgeseg_format = measure(args)
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"size {args.size}, batch {args.batch}, base {args.base}, depth {args.depth}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds of {args.steps} steps, "
          f"{'CPU' if args.cpu_time else 'wall'} seconds; edgeseg's loop {edgeseg_format}")
    for name, values in times.items():
        print(f"{name:8s} median {med[name]:.3f} s/step  rounds {' '.join(f'{v:.3f}' for v in values)}")
    print(f"ratio edgeseg / plain: {med['edgeseg'] / med['plain']:.3f}  "
          f"edgeseg / plain channels-last: {med['edgeseg'] / med['plain-cl']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
