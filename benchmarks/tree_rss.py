"""Peak memory of a command and every process it starts (DataLoader workers, a forkserver).

``/usr/bin/time -v`` reports one process's peak resident set (the largest of the command and
the descendants it waited for), which says nothing about a training run whose batches are read
by worker processes. This runs the command, samples ``/proc`` every ``--every`` seconds, and
reports as JSON: each process's own peak (``VmHWM``, exact, read at the last sample before it
ended), the peak of the summed resident sets of all of them at one sample (sampled, so a peak
shorter than the interval can be missed), and the same for anonymous memory (``RssAnon``: what
the processes allocated, not file pages the kernel can drop). The sum counts pages shared
between processes (libraries) once per process, so it is an upper bound.

    python benchmarks/tree_rss.py --json /tmp/rss.json -- edgeseg train --data ... --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _status(pid: int) -> dict[str, int] | None:
    """VmHWM, VmRSS and RssAnon of ``pid`` in KiB, or None when it has ended."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon"):
            fields[key] = int(value.split()[0])
    return fields if len(fields) == 3 else None


def process_sample(pid: int) -> dict[str, int] | None:
    """One process's resident set now (``rss_kib``), its peak (``hwm_kib``), anonymous memory
    (``anon_kib``), open file descriptors and threads, from ``/proc``; None when it has ended.
    The long-running measurements (benchmarks/soak.py) sample these every N requests."""
    status = _status(pid)
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if status is None:
        return None
    return {"rss_kib": status["VmRSS"], "hwm_kib": status["VmHWM"], "anon_kib": status["RssAnon"],
            "fds": fds, "threads": threads}


def folder_bytes(folder: str | os.PathLike) -> int:
    """The bytes of the files under ``folder`` now (files removed while it is walked count 0)."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except FileNotFoundError:
                continue
    return total


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it, from the parent ids in ``/proc/*/stat``."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            # The command name is in parentheses and may hold spaces; the parent id follows it.
            parent[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        found.extend(frontier)
    return found


def measure(command: list[str], every: float) -> dict:
    """Run ``command`` to its end, sampling its process tree; returns the figures and exit code."""
    started = time.monotonic()
    proc = subprocess.Popen(command)
    peaks: dict[int, dict] = {}
    peak_sum = peak_anon = 0
    while proc.poll() is None:
        total = anon = 0
        for pid in descendants(proc.pid):
            status = _status(pid)
            if status is None:
                continue
            if pid not in peaks:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                peaks[pid] = {"pid": pid, "command": cmdline[:120]}
            peaks[pid]["peak_rss_mb"] = round(status["VmHWM"] / 1024, 1)
            total, anon = total + status["VmRSS"], anon + status["RssAnon"]
        peak_sum, peak_anon = max(peak_sum, total), max(peak_anon, anon)
        time.sleep(every)
    return {"returncode": proc.returncode, "wall_s": round(time.monotonic() - started, 1),
            "peak_sum_rss_mb": round(peak_sum / 1024, 1), "peak_sum_anon_mb": round(peak_anon / 1024, 1),
            "processes": sorted(peaks.values(), key=lambda p: -p.get("peak_rss_mb", 0))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("--json", default=None, help="write the report here too")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    report = measure(command, args.every)
    text = json.dumps(report, indent=1)
    print(text, file=sys.stderr)
    if args.json:
        Path(args.json).write_text(text)
    return report["returncode"]


if __name__ == "__main__":
    sys.exit(main())
