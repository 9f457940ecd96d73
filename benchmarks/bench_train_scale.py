"""Training memory and speed as the data set grows: the slice store and streaming loader at scale.

For each data set size (phantom volumes of SIDE x SIDE pixels and SLICES slices, written as an
MSD-layout NIfTI data set) this measures, each in a fresh process:

- the time to build the slice store (and the build's peak RSS);
- the first STEPS training steps streamed from the store with 0, 1 and 2 DataLoader workers:
  peak RSS of the training process and of each worker, steady-state steps/s, the training
  process's CPU seconds per step, and the seconds per step it waited for its batch (zero when
  the loader keeps ahead; with 0 workers, the reading and augmenting done in that wait);
- the same steps on an in-memory list of the same, already read and augmented batches (the
  baseline: what the model step alone costs);
- what reading and augmenting one batch costs in one process, without the model (the loader's
  work per step, which the workers must keep ahead of);
- the store's size on disk.

With ``--repeats R`` the training modes run R rounds in turn (in-memory, then each worker count,
then again), and each streamed mode's steps/s is divided by the in-memory run of its own round:
the median of those paired ratios is robust to the machine's speed drifting between runs, which a
single round's ratio is not (one round's ratios spread by about 15% on a shared VM).

Fairness: every mode trains the same model from the same initial weights on the same batches
(the report carries a digest of the batches and the last loss, which must agree between modes),
and torch runs the model on ``--threads`` intra-op threads in every mode. DataLoader workers run
one torch thread each (PyTorch sets that in workers), on the cores the model leaves free: on a
2-core machine ``--threads 1`` leaves one core for the workers; with ``--threads 2`` they would
take their time from the model's cores. Worker peak RSS is each worker's own ``VmHWM`` read from
``/proc`` before the loader shuts down (workers are children of the forkserver, not of the
training process, so its ``RUSAGE_CHILDREN`` does not count them); the training process's own
peak is its ``VmHWM`` too (see ``_peak_rss_mb``).

Generating a 512 x 512 x 64 phantom takes seconds, writing it as NIfTI more; only the first
``--unique`` volumes are generated; larger sets repeat them under new case names (hard links),
which the store treats as separate cases exactly as it would different scans (each is read and
pre-processed into its own arrays).

    nice -n 10 python benchmarks/bench_train_scale.py --counts 8,32,128 --work /tmp/edgeseg-scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _spec(args):
    from edgeseg.spec import PreprocessSpec

    return PreprocessSpec(window=(-200.0, 300.0), size=(args.size, args.size))


def make_dataset(work: Path, count: int, unique: int, side: int, slices: int) -> Path:
    """An MSD-layout folder of ``count`` phantom cases, the first ``unique`` generated, the rest linked."""
    from edgeseg.data.phantom import phantom_geometry, write_phantom_dataset

    base = work / f"unique-{unique}-{side}-{slices}"
    if not (base / "dataset.json").is_file():
        shape, spacing = phantom_geometry(side, slices)
        write_phantom_dataset(base, cases=unique, seed=0, shape=shape, spacing=spacing, progress=True)
    out = work / f"cases-{count}-{side}-{slices}"
    if out.is_dir() and len(list((out / "imagesTr").iterdir())) == count:
        return out
    shutil.rmtree(out, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True)
        for k in range(count):
            os.link(base / sub / f"case_{k % unique:03d}.nii.gz", out / sub / f"case_{k:03d}.nii.gz")
    return out


def _peak_rss_mb() -> dict:
    """This process's own peak RSS: ``VmHWM`` from /proc/self/status. Not ``ru_maxrss``: on
    Linux a child that subprocess starts keeps the parent's high-water mark in it after exec, so
    every child of a parent that once held more (this script generating phantoms) would report at
    least the parent's peak. ``ru_maxrss`` only where /proc has no status (not Linux)."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.is_file() else []
    hwm = [int(line.split()[1]) for line in lines if line.startswith("VmHWM:")]
    kib = hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mb": round(kib / 1024, 1)}


def _children_peak_rss_mb() -> dict:
    """Peak RSS (``VmHWM``) of every live descendant of this process, largest first: the
    DataLoader workers, and the helpers multiprocessing starts (forkserver, resource tracker)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from tree_rss import _status, descendants

    found: dict[str, list[float]] = {"workers_peak_rss_mb": [], "helpers_peak_rss_mb": []}
    for pid in descendants(os.getpid())[1:]:
        status = _status(pid)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if status is not None:
            # Workers are forked from the forkserver, so they share its command line; the
            # forkserver itself (and the resource tracker) are this process's own children.
            stat = Path(f"/proc/{pid}/stat").read_text()
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            helper = b"resource_tracker" in command or (b"forkserver" in command and parent == os.getpid())
            found["helpers_peak_rss_mb" if helper else "workers_peak_rss_mb"].append(round(status["VmHWM"] / 1024, 1))
    return {k: sorted(v, reverse=True) for k, v in found.items()}


def child_build(args) -> dict:
    from edgeseg.data.store import open_slice_store

    started = time.perf_counter()
    store = open_slice_store(args.data, args.cache, _spec(args), {"liver": [1]})
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in store.path.iterdir())
    return {"build_s": round(seconds, 1), "built": store.built, "store_gb": round(size / 1e9, 3), "store_bytes": size,
            "slices": len(store), **_peak_rss_mb()}


def child_loader(args) -> dict:
    """Seconds of one process's time to read and augment one batch (no model, no workers)."""
    import torch

    torch.set_num_threads(1)
    loader = _loader(args, workers=0)
    started, cpu = time.perf_counter(), time.process_time()
    batches = sum(1 for _ in loader)
    return {"read_augment_s_per_batch": round((time.perf_counter() - started) / batches, 4),
            "read_augment_cpu_s_per_batch": round((time.process_time() - cpu) / batches, 4)}


def _loader(args, workers: int):
    import numpy as np
    import torch

    from edgeseg.data.store import open_slice_store
    from edgeseg.train.augment import AugmentConfig, BatchAugmenter
    from edgeseg.train.streaming import ForegroundBatchSampler, make_train_loader

    spec = _spec(args)
    store = open_slice_store(args.data, args.cache, spec, {"liver": [1]})
    sampler = ForegroundBatchSampler(np.arange(len(store)), store.present,
                                     args.batch_size, args.steps, 1 / 3, seed=0)
    augment = BatchAugmenter(spec, AugmentConfig(p=0.25))
    return make_train_loader(store, sampler, augment, workers, torch.device("cpu"))


def child_train(args) -> dict:
    import hashlib

    import torch

    from edgeseg.models import ModelConfig, build_model
    from edgeseg.train.losses import DiceCELoss

    # The same intra-op threads in every mode, so only the loading differs between them.
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="unet", num_classes=2, base=args.base, depth=args.depth))
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss()
    loader = _loader(args, 0 if args.mode == "memory" else args.workers)
    batches = list(loader) if args.mode == "memory" else loader
    times, cpu, waits, digest = [], [], [], hashlib.sha1()
    batch_iter = iter(batches)
    while True:
        # Time blocked waiting for the next batch: zero when the loader keeps ahead of the step.
        asked = time.perf_counter()
        try:
            images, labels = next(batch_iter)
        except StopIteration:
            break
        waits.append(time.perf_counter() - asked)
        loss = loss_fn(model(images.contiguous(memory_format=torch.channels_last)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter())
        cpu.append(time.process_time())
        digest.update(f"{float(images.sum()):.6e} {int(labels.sum())};".encode())
    workers_mb = _children_peak_rss_mb()
    del batches, loader  # ends the workers
    warm = args.warmup
    steps = len(times) - 1 - warm
    # CPU seconds of the training process per step: on a shared machine wall-clock steps/s
    # moves with the other load, while this shows what the loader adds to the training process.
    return {"steps_per_s": round(steps / (times[-1] - times[warm]), 3),
            "main_cpu_s_per_step": round((cpu[-1] - cpu[warm]) / steps, 3), "threads": torch.get_num_threads(),
            "data_wait_s_per_step": round(sum(waits[warm + 1:]) / steps, 4),
            "batches_digest": digest.hexdigest()[:12], "last_loss": round(float(loss.detach()), 6),
            **_peak_rss_mb(), **workers_mb}


def _run_child(args, role: str, **extra) -> dict:
    cmd = [sys.executable, __file__, "--child", role, *(f"--{k.replace('_', '-')}={v}" for k, v in extra.items()),
           f"--size={args.size}", f"--batch-size={args.batch_size}", f"--steps={args.steps}",
           f"--base={args.base}", f"--depth={args.depth}", f"--warmup={args.warmup}", f"--threads={args.threads}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"{role} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _interleaved_training(args, data, cache) -> dict:
    """The training modes run in turn, ``--repeats`` rounds (in-memory, 0, 1, 2 workers, then again),
    so that a drift in the machine's speed touches every mode alike. Each mode reports its median
    round with every round's steps/s; each streamed mode also its steps/s against the in-memory
    run of the same round (paired), the median of those ratios being the figure to quote."""
    modes = {"memory": dict(mode="memory", workers=0)}
    modes.update({f"workers_{w}": dict(mode="stream", workers=w) for w in (int(w) for w in args.workers.split(","))})
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, extra in modes.items():
            runs[name].append(_run_child(args, "train", data=data, cache=cache, **extra))
    out = {}
    for name, mine in runs.items():
        speeds = [r["steps_per_s"] for r in mine]
        median_run = sorted(mine, key=lambda r: r["steps_per_s"])[(len(mine) - 1) // 2]
        out[name] = {**median_run, "steps_per_s_rounds": speeds}
        if name != "memory":
            ratios = [r["steps_per_s"] / m["steps_per_s"] for r, m in zip(mine, runs["memory"])]
            out[name]["ratio_to_memory_rounds"] = [round(x, 4) for x in ratios]
            out[name]["ratio_to_memory"] = round(sorted(ratios)[(len(ratios) - 1) // 2], 4)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="8,32,128", help="data set sizes in volumes")
    parser.add_argument("--unique", type=int, default=8, help="volumes generated; larger sets repeat them")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="model input side (PreprocessSpec size)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of steps/s")
    parser.add_argument("--base", type=int, default=8, help="U-Net width")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of the training process, the same in every mode")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of the training modes, run in turn; each mode reports its median round")
    parser.add_argument("--work", default="/tmp/edgeseg-scale", help="folder for data sets and stores")
    parser.add_argument("--json", default=None, help="write the results here too")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child == "train":
            args.workers = int(args.workers)
        children = {"build": child_build, "train": child_train, "loader": child_loader}
        print(json.dumps(children[args.child](args)))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for count in (int(c) for c in args.counts.split(",")):
        data = make_dataset(work, count, min(args.unique, count), args.side, args.slices)
        cache = work / f"store-cache-{count}"
        shutil.rmtree(cache, ignore_errors=True)
        row = {"volumes": count, **{f"build_{k}": v for k, v in _run_child(args, "build", data=data, cache=cache).items()}}
        row["loader"] = _run_child(args, "loader", data=data, cache=cache)
        row.update(_interleaved_training(args, data, cache))
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
