"""Input fuzzing campaign: mutated files of every format edgeseg reads, run through its entry points.

Seeds are the samples in ``tests/data`` (and files derived from them: a cropped NIfTI, an
``.npy`` and a PNG of the same pixels) plus a tiny checkpoint and bundle made here. Each case
mutates one seed (``fuzz_mutations``: byte damage and header-field lies) and runs a public
entry point on it in a forked child under a memory limit (``RLIMIT_AS``) and a time limit
(``SIGALRM``), and the parent counts the outcome:

- ``clean error``: an ``EdgesegError`` (CLI: exit 2 with one ``edgeseg: error:`` line);
- ``success``: the input was read (mutations can leave a file valid);
- ``traceback``: any other exception, or a CLI exit that is not the one-line error;
- ``crash``: the child died of a signal (segfault, abort, ...);
- ``hang``: the time limit passed;
- ``over memory``: ``MemoryError``, or killed for memory.

The KServe v2 formats go to a real ``edgeseg serve`` on 127.0.0.1 (``fuzz_server``). A case is
reproduced from (format, seed, index); failing cases are copied under ``--findings``.

    nice -n 19 python benchmarks/fuzz_inputs.py --count 10000 --seed 1 --report /tmp/fuzz.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # children are forked: no thread pools to inherit half-locked

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# This checkout's edgeseg, whatever else is installed or on PYTHONPATH.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
import fuzz_mutations as fm  # noqa: E402

DATA = ROOT / "tests" / "data"
FILE_FORMATS = ("dicom", "nifti", "nrrd", "npy", "png", "jpeg", "dicom-seg", "manifest", "checkpoint")
SERVER_FORMATS = ("kserve-json", "kserve-binary")
FORMATS = FILE_FORMATS + SERVER_FORMATS
OUTCOMES = ("clean error", "success", "traceback", "crash", "hang", "over memory")
FAILURES = ("traceback", "crash", "hang", "over memory")
# Limits the children read under: small enough that the largest volume the limits admit,
# times the readers' copies, fits the memory limit.
CHILD_LIMITS = {"EDGESEG_MAX_VOLUME_BYTES": str(128 << 20), "EDGESEG_MAX_PIXELS": str(4096 * 4096)}


@dataclass
class Target:
    """One format: its seed bytes, its field mutators, and how a case is laid out and run."""

    name: str
    seed: bytes
    field_mutators: tuple
    write: callable  # (case folder, mutated bytes, rng) -> the path the entry point takes
    run: callable  # (path) -> None, raising on failure; runs in the forked child
    field_share: float = 0.5


@dataclass
class Tally:
    """Outcome counts of one format, the failing case indices and the wall time."""

    counts: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)
    warned: int = 0
    seconds: float = 0.0


# ---------------------------------------------------------------- seeds and targets

def _import_cli() -> None:
    """Import what ``edgeseg data info`` runs in the parent, so forked children start warm."""
    import edgeseg.cli.data  # noqa: F401
    import edgeseg.cli.main  # noqa: F401
    import edgeseg.data.open  # noqa: F401


def _cli(*args) -> None:
    """Run the edgeseg CLI in this process; exit 2 with one error line is a clean error."""
    from edgeseg.cli.main import cli

    cli.main(list(map(str, args)), prog_name="edgeseg", standalone_mode=True)


def _derived_seeds(work: Path) -> dict[str, Path]:
    """Small seeds made from tests/data: a cropped NIfTI, the same pixels as .npy and PNG."""
    import nibabel as nib
    import numpy as np
    from PIL import Image

    source = nib.load(DATA / "totalseg_example_ct" / "example_ct_sm.nii.gz")
    crop = np.asarray(source.dataobj)[:24, :20, :6].astype(np.int16)
    nifti = work / "seed.nii"
    nib.save(nib.Nifti1Image(crop, source.affine), nifti)
    npy = work / "seed.npy"
    np.save(npy, crop.transpose(2, 1, 0).astype(np.float32))
    png = work / "seed.png"
    with Image.open(sorted((DATA / "msd_liver_slices" / "images").iterdir())[0]) as jpeg:
        jpeg.convert("L").resize((48, 48)).save(png)
    return {"nifti": nifti, "npy": npy, "png": png}


def _cropped_series(source: Path, out: Path) -> Path:
    """The tests/data CT series cut to its central 64 x 64 pixels: the same headers, a faster case."""
    import pydicom

    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        top, left = (rows - 64) // 2, (columns - 64) // 2
        dataset.PixelData = dataset.pixel_array[top:top + 64, left:left + 64].copy().tobytes()
        dataset.Rows, dataset.Columns = 64, 64
        dataset.save_as(out / path.name)
    return out


def _reference_series():
    from edgeseg.data.dicom import read_dicom_series_with_refs

    return read_dicom_series_with_refs(DATA / "dcmqi_ct_liver" / "ct-3slice")


def build_target(name: str, work: Path) -> Target:
    """The Target of format ``name``, with seeds under ``work``; heavy set-up happens here, once."""
    dicom_dir = DATA / "dcmqi_ct_liver" / "ct-3slice"
    _import_cli()
    if name == "dicom":
        small = _cropped_series(dicom_dir, work / "dicom-seed")
        seed = (small / "03.dcm").read_bytes()

        def write(case, data, rng):
            series = case / "series"
            series.mkdir()
            for other in ("01.dcm", "02.dcm"):
                os.link(small / other, series / other)
            (series / "03.dcm").write_bytes(data)
            return series

        return Target(name, seed, (fm.dicom_field,), write, lambda path: _cli("data", "info", path, "--quiet"), 0.6)
    if name in ("nifti", "npy", "png", "jpeg"):
        derived = _derived_seeds(work) if name != "jpeg" else {}
        source = derived.get(name) or sorted((DATA / "msd_liver_slices" / "images").iterdir())[0]
        mutators = {"nifti": (fm.nifti_field,), "npy": (fm.npy_field,), "png": (fm.png_field,), "jpeg": (fm.jpeg_field,)}
        suffix = {"nifti": ".nii", "npy": ".npy", "png": ".png", "jpeg": ".jpg"}[name]

        def write(case, data, rng):
            if name == "nifti" and rng.random() < 0.3:
                path = case / "case.nii.gz"
                path.write_bytes(gzip.compress(data, compresslevel=1))
            else:
                path = case / f"case{suffix}"
                path.write_bytes(data)
            return path

        if name == "nifti":
            run = lambda path: _cli("data", "info", path, "--quiet")  # noqa: E731
        else:
            from edgeseg.runtime.readers import read_input

            run = lambda path: read_input(path)  # noqa: E731
        return Target(name, source.read_bytes(), mutators[name], write, run)
    if name in ("nrrd", "dicom-seg"):
        from edgeseg.data.labels import read_label_file

        volume, refs = _reference_series()
        seed_path = DATA / "dcmqi_ct_liver" / ("liver_seg.nrrd" if name == "nrrd" else "liver.dcm")
        suffix = ".nrrd" if name == "nrrd" else ".dcm"

        def write(case, data, rng):
            (case / f"label{suffix}").write_bytes(data)
            return case / f"label{suffix}"

        mutators = (fm.nrrd_field,) if name == "nrrd" else (fm.dicom_field,)
        return Target(name, seed_path.read_bytes(), mutators, write, lambda path: read_label_file(path, volume, refs))
    if name == "manifest":
        bundle = make_fuzz_bundle(work)

        def write(case, data, rng):
            copy = case / "bundle"
            copy.mkdir()
            for item in bundle.iterdir():
                if item.name != "manifest.json":
                    os.link(item, copy / item.name)
            (copy / "manifest.json").write_bytes(data)
            return copy

        def run(path):
            from edgeseg.runtime.segmenter import Segmenter

            Segmenter.load(path, backend="onnxruntime", threads=1).close()

        return Target(name, (bundle / "manifest.json").read_bytes(), (fm.json_field,), write, run, 0.7)
    if name == "checkpoint":
        return _checkpoint_target(work)
    raise ValueError(f"unknown file format {name!r}; known: {', '.join(FILE_FORMATS)}")


def _checkpoint_target(work: Path) -> Target:
    """Checkpoints: byte damage of the torch archive, and payload edits saved as valid archives."""
    import io

    import torch

    from edgeseg.models import ModelConfig, build_model
    from edgeseg.spec import PreprocessSpec
    from edgeseg.train.checkpoint import load_model, save_checkpoint

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ModelConfig(num_classes=2, base=4, depth=2)
    path = work / "seed.pt"
    save_checkpoint(path, build_model(config), config, PreprocessSpec(window=(-200.0, 300.0), size=(64, 64)),
                    ["background", "liver"], epoch=1)
    payload = torch.load(path, weights_only=True)

    def payload_edit(data, rng):
        edited = dict(payload)
        key = rng.choice(sorted(edited))
        if rng.random() < 0.2:
            del edited[key]
        elif key == "state_dict":
            state = dict(edited[key])
            name = rng.choice(sorted(state))
            action = rng.randrange(4)
            if action == 0:
                del state[name]
            elif action == 1:
                state[name] = torch.zeros(rng.choice(((1,), (3, 3), (0,), (2, 2, 2, 2, 2))))
            elif action == 2:
                state[name] = state[name].to(rng.choice((torch.float16, torch.int64, torch.bool, torch.complex64)))
            else:
                state[name + ".extra"] = torch.zeros(2)
            edited[key] = state
        elif isinstance(edited[key], dict):
            edited[key] = fm.edit_json(edited[key], rng)
        else:
            edited[key] = rng.choice(fm._JSON_VALUES)
        out = io.BytesIO()
        torch.save(edited, out)
        return out.getvalue()

    def write(case, data, rng):
        (case / "model.pt").write_bytes(data)
        return case / "model.pt"

    return Target("checkpoint", path.read_bytes(), (payload_edit,), write, lambda p: load_model(p), 0.6)


def make_fuzz_bundle(work: Path) -> Path:
    """A tiny real bundle (U-Net base 4, 64x64, ONNX FP32) made by the test bundle factory, in a subprocess."""
    out = work / "bundle"
    if not (out / "manifest.json").is_file():
        code = ("import sys; sys.path.insert(0, sys.argv[2]); import bundle_factory as f; "
                "f.make_bundle(sys.argv[1], base=4, depth=2, size=64, steps=0, int8=False, torchscript=False, classes=2)")
        subprocess.run([sys.executable, "-c", code, str(out), str(ROOT / "tests" / "runtime")], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    return out


# ---------------------------------------------------------------- running one case in a child

def _address_space_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1])
    return 0


def make_case(target: Target, seed: int, index: int, scratch: Path) -> tuple[Path, Path]:
    """Write case ``index`` of ``target`` (deterministic in seed and index); returns (folder, input path)."""
    rng = random.Random(f"{seed}:{target.name}:{index}")
    data = fm.mutate_bytes(target.seed, rng, target.field_mutators, target.field_share)
    case = Path(tempfile.mkdtemp(prefix=f"{target.name}-{index}-", dir=scratch))
    return case, target.write(case, data, rng)


def _run_one(target: Target, path: Path, case: Path, timeout_s: int) -> tuple[str, bool]:
    """Run one case in this (child) process with its output in ``case``; returns (outcome, warned)."""
    from edgeseg.errors import EdgesegError

    # Python-level and C-level output both land in the case folder (under pytest, sys.stderr
    # is a capture object, not file descriptor 2).
    sys.stdout, sys.stderr = open(case / "stdout", "w"), open(case / "stderr", "w")
    os.dup2(sys.stdout.fileno(), 1)
    os.dup2(sys.stderr.fileno(), 2)
    signal.alarm(timeout_s)  # default action: the child dies of SIGALRM, which the parent calls a hang
    outcome = "traceback"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            target.run(path)
            outcome = "success"
        except SystemExit as exc:
            outcome = _cli_outcome(exc, case)
        except EdgesegError:
            outcome = "clean error"
        except MemoryError:
            outcome = "over memory"
        except BaseException:  # noqa: BLE001 - every other escape is the finding itself
            (case / "traceback.txt").write_text(traceback.format_exc())
    signal.alarm(0)
    sys.stdout.close()
    sys.stderr.close()
    return outcome, bool(caught)


def _batch_child(target: Target, seed: int, indices: range, scratch: Path, findings: Path | None,
                 progress: Path, memory_mb: int, timeout_s: int) -> None:
    """A forked child running cases one after another; each case's start and outcome go to
    ``progress`` so the parent can tell which case killed the child. Never returns."""
    harness_stderr = os.dup(2)
    try:
        limit = (_address_space_kb() << 10) + (memory_mb << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        os.environ.update(CHILD_LIMITS)
        with open(progress, "a", buffering=1) as log:
            for index in indices:
                case, path = make_case(target, seed, index, scratch)
                log.write(f"start {index}\n")
                outcome, warned = _run_one(target, path, case, timeout_s)
                if outcome in FAILURES and findings is not None:
                    shutil.copytree(case, findings / f"{target.name}-{seed}-{index}", dirs_exist_ok=True)
                shutil.rmtree(case, ignore_errors=True)
                log.write(f"done {index} {outcome.replace(' ', '_')} {int(warned)}\n")
    except BaseException:  # noqa: BLE001 - a broken harness must show, not count as a finding
        os.dup2(harness_stderr, 2)
        sys.stderr = sys.__stderr__
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(70)
    os._exit(0)


def _cli_outcome(exc: SystemExit, case: Path) -> str:
    """A CLI exit: 0 is success, 2 with one last `edgeseg: error:` line a clean error, else a traceback."""
    if exc.code in (0, None):
        return "success"
    sys.stderr.flush()  # the case's stderr file
    lines = [ln for ln in (case / "stderr").read_text(errors="replace").splitlines() if ln.strip()]
    clean = exc.code == 2 and lines and lines[-1].startswith("edgeseg: error:") and not any("Traceback" in ln for ln in lines)
    if not clean:
        (case / "traceback.txt").write_text(f"exit {exc.code}\n" + "\n".join(lines[-20:]))
    return "clean error" if clean else "traceback"


def _death(status: int) -> str:
    """The outcome of the case a child died in."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig in (signal.SIGALRM, signal.SIGXCPU):
            return "hang"
        return "over memory" if sig == signal.SIGKILL else "crash"
    return "crash"


def run_file_format(target: Target, count: int, seed: int, scratch: Path, findings: Path | None,
                    memory_mb: int = 1536, timeout_s: int = 30, start: int = 0, batch: int = 200) -> Tally:
    """Run ``count`` mutated cases of ``target`` (indices start..start+count-1) in forked children
    of up to ``batch`` cases each; a child that dies is charged with the case it was running and
    a new child goes on with the next case. Returns the tally."""
    tally, began, index, end = Tally(), time.perf_counter(), start, start + count
    progress = scratch / f"{target.name}.progress"
    while index < end:
        progress.write_text("")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _batch_child(target, seed, range(index, min(index + batch, end)), scratch, findings, progress,
                         memory_mb, timeout_s)
        _, status = os.waitpid(pid, 0)
        running = None
        for line in progress.read_text().splitlines():
            words = line.split()
            if words[0] == "start":
                running = int(words[1])
            else:
                outcome = words[2].replace("_", " ")
                tally.counts[outcome] += 1
                tally.warned += int(words[3])
                if outcome in FAILURES:
                    tally.failures.append(int(words[1]))
                running, index = None, int(words[1]) + 1
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 70:
            raise RuntimeError(f"the fuzzing harness failed in a {target.name} child (see stderr)")
        if running is not None:  # the child died in this case
            outcome = _death(status)
            tally.counts[outcome] += 1
            tally.failures.append(running)
            if findings is not None:
                case, _ = make_case(target, seed, running, scratch)
                (case / "outcome.txt").write_text(f"{outcome}: wait status {status}\n")
                shutil.copytree(case, findings / f"{target.name}-{seed}-{running}", dirs_exist_ok=True)
                shutil.rmtree(case, ignore_errors=True)
            for leftover in scratch.glob(f"{target.name}-{running}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            index = running + 1
    tally.seconds = time.perf_counter() - began
    return tally


# ---------------------------------------------------------------- the campaign

def run_campaign(formats: dict[str, int], seed: int, findings: Path | None = None, memory_mb: int = 1536,
                 timeout_s: int = 30, log=print, chunk: int | None = None, deadline: float | None = None,
                 on_round=None) -> dict[str, Tally]:
    """Fuzz each format with its count of cases (``{format: count}``); returns the tally per format.

    With ``chunk``, formats take turns ``chunk`` cases at a time, so a campaign stopped at
    ``deadline`` (a ``time.monotonic()`` value; no new chunk starts after it) has covered every
    format; ``on_round(results)`` is called after each turn, e.g. to save partial figures.
    """
    from fuzz_server import run_server_format

    results = {name: Tally() for name in formats}
    done = dict.fromkeys(formats, 0)
    targets: dict[str, Target] = {}
    with tempfile.TemporaryDirectory(prefix="edgeseg-fuzz-") as tmp:
        work = Path(tmp)
        (work / "scratch").mkdir()
        while any(done[name] < formats[name] for name in formats):
            for name in [n for n in formats if done[n] < formats[n]]:
                if deadline is not None and time.monotonic() > deadline:
                    return results
                count = min(chunk or formats[name], formats[name] - done[name])
                if name in SERVER_FORMATS:
                    part = run_server_format(name, make_fuzz_bundle(work), count, seed, findings, timeout_s=timeout_s,
                                             start=done[name])
                else:
                    if name not in targets:
                        targets[name] = build_target(name, work)
                    part = run_file_format(targets[name], count, seed, work / "scratch", findings, memory_mb=memory_mb,
                                           timeout_s=timeout_s, start=done[name])
                _merge(results[name], part)
                done[name] += count
                log(format_row(name, results[name]))
            if on_round is not None:
                on_round(results)
    return results


def _merge(total: Tally, part: Tally) -> None:
    total.counts.update(part.counts)
    total.failures.extend(part.failures)
    total.warned += part.warned
    total.seconds += part.seconds


def format_row(name: str, tally: Tally) -> str:
    cells = [name, str(sum(tally.counts.values()))] + [str(tally.counts.get(o, 0)) for o in OUTCOMES]
    return "| " + " | ".join(cells + [str(tally.warned), f"{tally.seconds:.0f}"]) + " |"


def format_table(results: dict[str, Tally]) -> str:
    header = "| format | inputs | " + " | ".join(OUTCOMES) + " | warned | seconds |"
    rule = "|" + "---|" * (len(OUTCOMES) + 4)
    total = Tally()
    for tally in results.values():
        total.counts.update(tally.counts)
        total.warned += tally.warned
        total.seconds += tally.seconds
    return "\n".join([header, rule] + [format_row(n, t) for n, t in results.items()] + [format_row("total", total)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help="comma-separated, each optionally NAME=COUNT, from: " + ", ".join(FORMATS))
    parser.add_argument("--count", type=int, default=200, help="mutated inputs per format without its own count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-mb", type=int, default=1536, help="address space a child may add (RLIMIT_AS)")
    parser.add_argument("--timeout", type=int, default=30, help="seconds a case may take")
    parser.add_argument("--findings", type=Path, default=None, help="folder for the failing cases")
    parser.add_argument("--report", type=Path, default=None, help="JSON file for the tallies (rewritten each turn)")
    parser.add_argument("--chunk", type=int, default=None, help="cases per format per turn (default: all at once)")
    parser.add_argument("--minutes", type=float, default=None, help="start no new chunk after this many minutes")
    args = parser.parse_args()
    if args.findings:
        args.findings.mkdir(parents=True, exist_ok=True)
    formats = {}
    for item in filter(None, (f.strip() for f in args.formats.split(","))):
        name, _, count = item.partition("=")
        if name not in FORMATS:
            parser.error(f"unknown format {name!r}; known: {', '.join(FORMATS)}")
        formats[name] = int(count) if count else args.count
    began = time.perf_counter()

    def save(results):
        if args.report:
            args.report.write_text(json.dumps(
                {"command": " ".join(sys.argv), "wall_seconds": round(time.perf_counter() - began),
                 "formats": {name: {"counts": dict(t.counts), "failures": t.failures, "warned": t.warned,
                                    "seconds": round(t.seconds, 1)} for name, t in results.items()}}, indent=2))

    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    results = run_campaign(formats, args.seed, args.findings, args.memory_mb, args.timeout,
                           log=lambda row: print(row, flush=True), chunk=args.chunk, deadline=deadline, on_round=save)
    save(results)
    print(format_table(results))
    print(f"wall time {time.perf_counter() - began:.0f} s")
    return 1 if any(t.counts.get(o) for t in results.values() for o in FAILURES) else 0


if __name__ == "__main__":
    sys.exit(main())
