"""Training memory and speed as the data set grows: the slice store and streaming loader at scale.

For each data set size (phantom volumes of SIDE x SIDE pixels and SLICES slices, written as an
MSD-layout NIfTI data set) this measures, each in a fresh process:

- the time to build the slice store (and the build's peak RSS);
- the first STEPS training steps streamed from the store with 0, 1 and 2 DataLoader workers:
  peak RSS of the training process (and of its workers) and steady-state steps/s;
- the same steps on an in-memory tensor of the same, already augmented batches (the baseline:
  what the model step alone costs);
- the store's size on disk.

Generating a 512 x 512 x 64 phantom takes about 30 s on a 2-core machine, so only the first
``--unique`` volumes are generated; larger sets repeat them under new case names (hard links),
which the store treats as separate cases exactly as it would different scans.

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
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": round(own, 1), "workers_peak_rss_mb": round(children, 1)}


def child_build(args) -> dict:
    from edgeseg.data.store import open_slice_store

    started = time.perf_counter()
    store = open_slice_store(args.data, args.cache, _spec(args), {"liver": [1]})
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in store.path.iterdir())
    return {"build_s": round(seconds, 1), "built": store.built, "store_gb": round(size / 1e9, 3),
            "slices": len(store), **_peak_rss_mb()}


def child_train(args) -> dict:
    import numpy as np
    import torch

    from edgeseg.data.store import open_slice_store
    from edgeseg.models import ModelConfig, build_model
    from edgeseg.train.augment import AugmentConfig, BatchAugmenter
    from edgeseg.train.losses import DiceCELoss
    from edgeseg.train.streaming import ForegroundBatchSampler, make_train_loader

    torch.manual_seed(0)
    spec = _spec(args)
    store = open_slice_store(args.data, args.cache, spec, {"liver": [1]})
    sampler = ForegroundBatchSampler(np.arange(len(store)), store.present,
                                     args.batch_size, args.steps, 1 / 3, seed=0)
    augment = BatchAugmenter(spec, AugmentConfig(p=0.25))
    model = build_model(ModelConfig(name="unet", num_classes=2, base=args.base, depth=args.depth))
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss()
    loader = make_train_loader(store, sampler, augment, 0 if args.mode == "memory" else args.workers,
                               torch.device("cpu"))
    batches = list(loader) if args.mode == "memory" else loader
    times, cpu = [], []
    for images, labels in batches:
        loss = loss_fn(model(images.contiguous(memory_format=torch.channels_last)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter())
        cpu.append(time.process_time())
    del batches, loader  # joins the workers, so their peak RSS is counted below
    warm = args.warmup
    steps = len(times) - 1 - warm
    # CPU seconds of the training process per step: on a shared machine wall-clock steps/s
    # moves with the other load, while this shows what the loader adds to the training process.
    return {"steps_per_s": round(steps / (times[-1] - times[warm]), 3),
            "main_cpu_s_per_step": round((cpu[-1] - cpu[warm]) / steps, 3), **_peak_rss_mb()}


def _run_child(args, role: str, **extra) -> dict:
    cmd = [sys.executable, __file__, "--child", role, *(f"--{k.replace('_', '-')}={v}" for k, v in extra.items()),
           f"--size={args.size}", f"--batch-size={args.batch_size}", f"--steps={args.steps}",
           f"--base={args.base}", f"--depth={args.depth}", f"--warmup={args.warmup}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"{role} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--workers", default="0,1,2")
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
        print(json.dumps(child_build(args) if args.child == "build" else child_train(args)))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for count in (int(c) for c in args.counts.split(",")):
        data = make_dataset(work, count, min(args.unique, count), args.side, args.slices)
        cache = work / f"store-cache-{count}"
        shutil.rmtree(cache, ignore_errors=True)
        row = {"volumes": count, **{f"build_{k}": v for k, v in _run_child(args, "build", data=data, cache=cache).items()}}
        row["memory"] = _run_child(args, "train", data=data, cache=cache, mode="memory", workers=0)
        for workers in (int(w) for w in args.workers.split(",")):
            row[f"workers_{workers}"] = _run_child(args, "train", data=data, cache=cache, mode="stream", workers=workers)
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
