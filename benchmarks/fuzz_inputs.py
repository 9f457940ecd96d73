"""Input fuzzing campaign: mutated files of every format edgeseg reads, run through its entry points.

Each case mutates one seed (``fuzz_mutations``: byte damage and header-field lies) and runs a
public entry point (``fuzz_targets``: seeds from ``tests/data``, entry points per format) on it
in a forked child under a memory limit (``RLIMIT_AS``) and a time limit (``SIGALRM``), and the
parent counts the outcome:

- ``clean error``: an ``EdgesegError`` (CLI: exit 2 with one ``edgeseg: error:`` line);
- ``success``: the input was read (mutations can leave a file valid);
- ``traceback``: any other exception, or a CLI exit that is not the one-line error;
- ``crash``: the child died of a signal (segfault, abort, ...);
- ``hang``: more than the time limit of CPU time (or 20 times it of wall time);
- ``over memory``: ``MemoryError``, or killed for memory.

The KServe v2 formats go to a real ``edgeseg serve`` on 127.0.0.1 (``fuzz_server``). A case is
reproduced from (format, seed, index); failing cases are copied under ``--findings``.

    nice -n 19 python benchmarks/fuzz_inputs.py --formats npy=1000,dicom=200 --seed 1 --chunk 100 \
        --minutes 30 --findings /tmp/findings --report /tmp/fuzz.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # children are forked: no thread pools to inherit half-locked

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
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
from fuzz_targets import FILE_FORMATS, Target, build_target, make_fuzz_bundle  # noqa: E402

SERVER_FORMATS = ("kserve-json", "kserve-binary")
FORMATS = FILE_FORMATS + SERVER_FORMATS
OUTCOMES = ("clean error", "success", "traceback", "crash", "hang", "over memory")
FAILURES = ("traceback", "crash", "hang", "over memory")
# Limits the children read under: small enough that the largest volume the limits admit,
# times the readers' copies, fits the memory limit.
# The wall-clock backstop of a case, as a multiple of its CPU-time limit.
WALL_FACTOR = 20
CHILD_LIMITS = {"EDGESEG_MAX_VOLUME_BYTES": str(128 << 20), "EDGESEG_MAX_PIXELS": str(4096 * 4096)}


@dataclass
class Tally:
    """Outcome counts of one format, the failing case indices and the wall time."""

    counts: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)
    warned: int = 0
    seconds: float = 0.0


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
    # A hang is more than timeout_s of CPU time (SIGXCPU), so a starved low-priority run on a
    # busy machine is not mistaken for one; the wall-clock alarm only catches a case that
    # blocks without using CPU. Either signal kills the child, which the parent calls a hang.
    used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(used) + timeout_s + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    signal.alarm(timeout_s * WALL_FACTOR)
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
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
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
        signal.signal(signal.SIGXCPU, signal.SIG_DFL)
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
