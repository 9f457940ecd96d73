"""Latency of a bundle on this machine, per backend and per stage, as ``edgeseg bench`` reports it.

Stages: decode (a 16-bit PNG slice to HU), pre-process (C kernel), inference (model only, the
runner's ``infer``), post-process (C kernel, back to the input size) and end to end (HU in,
labels at the input size out, through ``Segmenter``). The input is a synthetic abdominal CT
phantom at the requested size (body, liver, spleen, kidneys, spine; int16 HU, as scanners store
it): post-processing costs depend on how much of a slice the model labels, so timing it on
organ-free noise would flatter or penalise it. Each is timed after warm-up and reported
as min / p50 / p90 / p99 / max in milliseconds per call. A volume of slices gives pipelined
throughput next to the model-only throughput of the same batches; a fresh process gives the
cold start (process start to first result) and the peak RSS. GPU inference times include the
copies between host and device.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeseg.data.phantom import DEFAULT_SPACING as PHANTOM_SPACING, synth_phantom
from edgeseg.errors import BackendError, require
from edgeseg.kernels import postprocess, preprocess
from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.segmenter import KERNEL_THREADS, Segmenter
from edgeseg.runtime.runners import library_distributions
from edgeseg.runtime.runners.remote import is_remote
from edgeseg.runtime.machine import installed_versions, machine_signature
from edgeseg.runtime.selection import canonical_backend, candidates, parse_backend

STAGES = ("decode", "preprocess", "inference", "postprocess", "end_to_end")
PERCENTILES = (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
VOLUME_SLICES = 32  # the volume whose pipelined throughput is measured


def latency_stats(samples_s: list[float]) -> dict[str, float]:
    """min / p50 / p90 / p99 / max and mean of timings given in seconds, in milliseconds.
    Percentiles interpolate linearly between the sorted samples (numpy's default)."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    stats = {name: round(float(np.percentile(ms, q)), 3) for name, q in PERCENTILES}
    return {**stats, "mean": round(float(ms.mean()), 3)}


def software_versions() -> dict[str, str]:
    """edgeseg, Python, numpy and each installed backend library, by distribution name: a figure
    moves with them as much as with the CPU, so two results are comparable only where they agree."""
    import platform

    from edgeseg import __version__

    return {"edgeseg": __version__, "python": platform.python_version(), "numpy": np.__version__,
            **installed_versions(library_distributions())}


def phantom_shape(count: int, size: int) -> tuple[int, int, int]:
    """The shape of the phantom volume :func:`ct_slices` draws ``count`` slices from."""
    return max(count + count // 2, 8), size, size


def input_shape(batches: tuple[int, ...], max_batch: int, size: int, volume_slices: int = VOLUME_SLICES) -> tuple[int, int, int]:
    """The phantom volume :func:`bench_backend` synthesises for ``batches`` (those up to the
    bundle's ``max_batch``) at ``size``: checked against the input limits before anything runs."""
    measured = tuple(b for b in batches if b <= max_batch) or (1,)
    return phantom_shape(max(max(measured), volume_slices), size)


def ct_slices(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``count`` int16 (size, size) slices of the phantom's liver region, middle slice first."""
    depth = phantom_shape(count, size)[0]
    volume = synth_phantom("bench", seed, shape=(depth, size, size))
    middle = depth // 2
    order = sorted(range(depth), key=lambda z: (abs(z - middle), z))[:count]
    return np.ascontiguousarray(np.rint(volume.hu[order]).astype(np.int16))


def time_interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: int,
                     seconds: float | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn (a, b, c, a, b, c, ...): ``runs``
    rounds after ``warmup`` untimed ones; with ``seconds``, rounds until at least that long has
    passed since the first timed one (at least one), but still at most ``runs`` (functions of
    microseconds would otherwise fill memory with timings).

    Taking turns exposes every stage to the same clock speed, cache state and neighbours, so
    ratios between stages (end to end over model only) do not pick up drift between two blocks
    of calls measured minutes apart.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    deadline = None if seconds is None else time.perf_counter() + seconds
    rounds = 0
    while rounds < runs and (deadline is None or rounds == 0 or time.perf_counter() < deadline):
        rounds += 1
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def backend_labels(bundle: str | Path, wanted: list[str]) -> list[str]:
    """``all`` -> auto plus every installed ``runner:precision`` of the bundle; else ``wanted``,
    each checked first: BackendError for a name no runner has (listing those that exist), or one
    the bundle has no artifact for (listing what it offers)."""
    manifest = read_manifest(bundle)
    wanted = [canonical_backend(text) for text in wanted]  # the table and the JSON name them as the runtime does
    if wanted == ["all"]:
        return ["auto", *[c.label for c in candidates(manifest)]]
    if "all" in wanted:
        raise BackendError("--backend all measures every backend; it cannot be combined with other --backend names")
    offered = candidates(manifest, installed_only=False)
    for text in wanted:
        if text == "auto" or is_remote(text):
            continue
        name, precision = parse_backend(text)
        if not any(c.runner == name and precision in (None, c.entry.precision) for c in offered):
            raise BackendError(f"backend {text!r} has no artifact in this bundle; it offers "
                               f"{', '.join(sorted({c.label for c in offered}))}")
    return list(wanted)


def _png16(slice_hu: np.ndarray) -> bytes:
    Image = require("PIL.Image", "io", "the PNG decode stage of the benchmark")

    buffer = io.BytesIO()
    Image.fromarray((slice_hu.astype(np.int32) + 32768).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode(data: bytes) -> np.ndarray:
    Image = require("PIL.Image", "io", "the PNG decode stage of the benchmark")

    with Image.open(io.BytesIO(data)) as image:
        return (np.asarray(image, dtype=np.int32) - 32768).astype(np.int16)


def bench_backend(bundle: str | Path, backend: str, *, batches: tuple[int, ...] = (1, 8), size: int = 512,
                  runs: int = 30, warmup: int = 5, volume_slices: int = VOLUME_SLICES, threads: int = 0,
                  tta: str = "none", duration: float | None = None) -> dict:
    """All stage timings and the volume throughput of one backend (see the module docstring).
    With test-time mirroring ``tta``, end to end and the volume's pipelined throughput include
    its extra network passes; ``inference`` and ``model-only`` stay one pass. ``duration``:
    seconds each batch size's rounds, and the volume's, run for at least, with ``runs`` their
    most (each batch records the rounds it ran)."""
    # fov_check off: the slices are made up at --size with the phantom's spacing only for min_ml's filters;
    # their field of view says nothing of the scans the bundle will see (and refuse mode would stop the bench)
    with Segmenter.load(bundle, backend=backend, threads=threads, tta=tta, fov_check="off") as seg:
        spec, n_max = seg.spec, seg.manifest.max_batch
        batches = tuple(b for b in batches if b <= n_max) or (1,)
        hu = ct_slices(max(max(batches), volume_slices), size)
        png = _png16(hu[0])
        result = {"backend": backend, "chosen": seg.backend, "device": seg.runner.device,
                  "artifact": seg.runner.artifact, "size": size, "tta": tta, "machine": machine_signature(),
                  "versions": software_versions(),
                  "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  # what the figures were measured with, so a JSON alone says how to repeat it
                  "runs": None if duration else runs, "duration": duration, "warmup": warmup, "threads": threads,
                  # the count the backend computed with (what --threads 0 left to it); null where it cannot say
                  "threads_used": seg.runner.threads_used, "batches": {}}
        for b in batches:
            batch_in = preprocess(hu[:b], spec)
            logits = seg.infer(batch_in)
            stages = time_interleaved({
                "decode": lambda: [_decode(png) for _ in range(b)],
                "preprocess": lambda: preprocess(hu[:b], spec, out=batch_in, num_threads=KERNEL_THREADS),
                "inference": lambda: seg.infer(batch_in),
                "postprocess": lambda: postprocess(logits, (size, size), keep_largest=seg.keep_largest,
                                                   resize=seg.resize_mode, fit=spec.fit, num_threads=KERNEL_THREADS),
                # the stacks are cut from a phantom of known voxel size, which a bundle that
                # removes 3-D components by mL needs (others ignore it)
                "end_to_end": (lambda: seg.predict(hu[0])) if b == 1
                              else (lambda: seg.predict_volume(hu[:b], batch_size=b, spacing=PHANTOM_SPACING)),
            }, runs, warmup, duration)
            stats = {name: latency_stats(samples) for name, samples in stages.items()}
            stats["runs"] = len(stages["inference"])
            # Per round, end to end over model only: the two ran back to back, so drift cancels.
            per_round = np.asarray(stages["end_to_end"]) / np.asarray(stages["inference"])
            stats["end_to_end_over_model"] = {"p50": round(float(np.median(per_round)), 3),
                                              "of_p50s": round(stats["end_to_end"]["p50"] / stats["inference"]["p50"], 3)}
            # every timed call, in order, so other statistics can be computed from the JSON alone
            stats["samples_ms"] = {name: [round(t * 1e3, 4) for t in samples] for name, samples in stages.items()}
            result["batches"][str(b)] = stats
        # the best of 3 rounds (of a tenth of --runs where more), never more rounds than --runs
        # and no warm-up round under --warmup 0: a quick check (--runs 1) stays quick on a slow backend
        result["volume"] = _volume_throughput(seg, hu[:volume_slices], max(batches), min(runs, max(3, runs // 10)),
                                              min(warmup, 1), duration)
    return result


def _volume_throughput(seg: Segmenter, volume: np.ndarray, batch: int, repeats: int, warmup: int = 1,
                       seconds: float | None = None) -> dict:
    """Slices per second of ``predict_volume`` and of the model alone on the same batches, the
    best of ``repeats`` rounds (or of the rounds of at least ``seconds``) after ``warmup`` untimed ones."""
    inputs = [preprocess(volume[i:i + batch], seg.spec) for i in range(0, len(volume), batch)]
    times = time_interleaved({"pipelined": lambda: seg.predict_volume(volume, batch_size=batch, spacing=PHANTOM_SPACING),
                              "model_only": lambda: [seg.infer(x) for x in inputs]}, repeats, warmup, seconds)
    pipelined, model_only = min(times["pipelined"]), min(times["model_only"])
    return {"slices": len(volume), "batch": batch, "rounds": len(times["pipelined"]),
            "pipelined_slices_per_s": round(len(volume) / pipelined, 2),
            "model_only_slices_per_s": round(len(volume) / model_only, 2),
            "ratio": round(model_only / pipelined, 3)}


# The child's own peak is its VmHWM: on Linux a process that subprocess starts keeps its parent's
# RSS high-water mark in ru_maxrss after exec (the bench process, which has loaded every backend,
# would be measured instead). ru_maxrss only where /proc has no status (not Linux; bytes on macOS).
_COLD_START = textwrap.dedent("""
    import sys, resource
    from pathlib import Path
    import numpy as np
    from edgeseg.runtime import Segmenter
    seg = Segmenter.load(sys.argv[1], backend=sys.argv[2], threads=int(sys.argv[3]), tta=sys.argv[5])
    seg.predict(np.full((int(sys.argv[4]), int(sys.argv[4])), -1000, np.int16))
    print("first-result", flush=True)
    status = Path("/proc/self/status")
    hwm = [int(ln.split()[1]) for ln in (status.read_text().splitlines() if status.is_file() else []) if ln.startswith("VmHWM:")]
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    print("VmHWM" if hwm else "ru_maxrss", hwm[0] if hwm else int(maxrss))
""")


def cold_start(bundle: str | Path, backend: str, size: int = 512, threads: int = 0, tta: str = "none") -> dict:
    """Wall time from starting a Python process to its first segmented slice (mirrored as
    ``tta`` says), and that process's own peak RSS (``peak_rss_source``: where it was read)."""
    # The clock stops when the child says its first slice is done, not when it has exited: an
    # interpreter's shutdown (unloading torch, a runtime's thread pools) is no part of the start.
    # Its messages go to a file, so a chatty child cannot fill a pipe nobody reads yet and stall.
    with tempfile.TemporaryFile(mode="w+") as log:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", _COLD_START, str(bundle), backend, str(threads), str(size), tta],
                                 stdout=subprocess.PIPE, stderr=log, text=True, env=dict(os.environ))
        seconds = None
        with child:
            for line in child.stdout:
                if line.strip() == "first-result":
                    seconds = time.perf_counter() - start
                    break
            rest = child.stdout.read()
        log.seek(0)
        if child.returncode != 0 or seconds is None:
            return {"error": (log.read().strip().splitlines() or ["failed"])[-1]}
    source, kib = rest.split()[-2:]
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(int(kib) / 1024, 1), "peak_rss_source": source}


def format_table(results: list[dict]) -> str:
    """A terminal table: one row per backend, stage and batch, then throughput and cold start."""
    names = [n for n, _ in PERCENTILES] + ["mean"]
    lines = [f"{'backend':<24} {'batch':>5} {'stage':<12} " + " ".join(f"{n:>8}" for n in names) + "  (ms per call)"]
    for r in results:
        if "error" in r:
            lines.append(f"{r['backend']:<24} error: {r['error']}")
            continue
        name = r["backend"] if r["backend"] == r["chosen"] else f"{r['backend']}->{r['chosen']}"
        name += f" tta {r['tta']}" if r.get("tta", "none") != "none" else ""
        for b, stages in r["batches"].items():
            for stage in STAGES:
                lines.append(f"{name:<24} {b:>5} {stage:<12} " + " ".join(f"{stages[stage][n]:>8.2f}" for n in names))
            ratio = stages.get("end_to_end_over_model")
            if ratio:
                lines.append(f"{name:<24} {b:>5} {'e2e/model':<12} {ratio['p50']:>8.3f}  (median over rounds; "
                             f"ratio of p50s {ratio['of_p50s']:.3f})")
    lines.append("")
    lines.append(f"{'backend':<24} {'volume slices/s':>16} {'model-only':>11} {'ratio':>6} {'cold start s':>13} {'peak RSS MB':>12}")
    failed_starts = []
    for r in results:
        if "error" in r:
            continue
        v, c = r["volume"], r.get("cold_start")
        if c is None:  # --no-cold-start: not measured
            cold = f"{'-':>13} {'-':>12}"
        elif "error" in c:
            cold = f"{'failed':>13} {'-':>12}"
            failed_starts.append(f"cold start of {r['backend']} failed: {c['error']}")
        else:
            cold = f"{c['seconds']:>13.2f} {c['peak_rss_mb']:>12.0f}"
        lines.append(f"{r['backend']:<24} {v['pipelined_slices_per_s']:>16.1f} {v['model_only_slices_per_s']:>11.1f} "
                     f"{v['ratio']:>6.2f} {cold}")
    lines += failed_starts
    if any(r.get("device", "cpu") != "cpu" for r in results):
        lines.append("GPU inference times include the host-to-device and device-to-host copies.")
    machines = list(dict.fromkeys(r["machine"] for r in results if "machine" in r))
    if machines:
        lines.append(f"measured on: {'; '.join(machines)}")
    versions = list(dict.fromkeys(", ".join(f"{k} {v}" for k, v in r["versions"].items())
                                  for r in results if "versions" in r))
    if versions:
        lines.append(f"with: {'; '.join(versions)}")
    return "\n".join(lines)


def latency_figure(results: list[dict]):
    """The figure :func:`plot_latency` writes: p50 latency per stage and backend at each batch
    size, a bar from p50 up to p99, on a log axis (a 0.02 ms kernel next to a 50 ms model, and
    a p99 outlier, would otherwise flatten every other bar to nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    batch_keys = sorted({b for r in ok for b in r["batches"]}, key=int)
    figure, axes = plt.subplots(1, max(1, len(batch_keys)), figsize=(6 * max(1, len(batch_keys)), 4.8), squeeze=False,
                                layout="constrained")
    width = 0.8 / max(1, len(ok))
    for ax, b in zip(axes[0], batch_keys):
        for i, r in enumerate(ok):
            stages = r["batches"].get(b)
            if not stages:
                continue
            p50 = [stages[s]["p50"] for s in STAGES]
            err = [[0] * len(STAGES), [stages[s]["p99"] - stages[s]["p50"] for s in STAGES]]
            label = r["backend"] if r["backend"] == r["chosen"] else f"{r['backend']} ({r['chosen']})"
            ax.bar(np.arange(len(STAGES)) + i * width, p50, width, yerr=err, label=label, capsize=2, color=f"C{i}")
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(STAGES)) + width * (len(ok) - 1) / 2, STAGES, rotation=20)
        ax.set_ylabel("ms per call, log scale (p50, bar to p99)")
        ax.set_title(f"batch {b}, {ok[0]['size']}x{ok[0]['size']} int16 input")
        ax.grid(axis="y", which="both", alpha=0.3)
    # one legend for all panels, under them: inside an axis it hid the bars of several backends
    handles, names = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncol=min(4, max(1, len(names))), fontsize=8)
    machines = list(dict.fromkeys(r["machine"] for r in ok if "machine" in r))
    if machines:
        figure.suptitle(textwrap.fill(f"measured on: {'; '.join(machines)}", 120), fontsize=8)
    return figure


def plot_latency(results: list[dict], out: str | Path) -> Path:
    """Write :func:`latency_figure` as a PNG (atomically)."""
    import matplotlib.pyplot as plt

    from edgeseg.atomic import atomic_path

    figure = latency_figure(results)
    with atomic_path(out, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return Path(out)


def write_json(results: list[dict], out: str | Path) -> Path:
    """The results as JSON, for machines."""
    from edgeseg.atomic import atomic_write_text

    atomic_write_text(out, json.dumps(results, indent=1) + "\n")
    return Path(out)
