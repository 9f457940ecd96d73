"""The hot paths of two (or more) edgeseg source trees, in turns: which one got slower.

    python benchmarks/hot_paths_ab.py --tree old=DIR --tree new=DIR --bundle BUNDLE \\
        --nifti CASE.nii.gz --dicom SERIES_DIR [--rounds 5] [--task predict,api,bench,serve,node]

Each tree is an edgeseg source folder with its built ``_kernels`` extension (a detached worktree
of an older commit, or this checkout); every child process runs with ``PYTHONPATH=TREE`` in a
temporary folder (``python -m`` puts its working folder first on ``sys.path``). Every round
runs each task once per tree, the trees in turns (A B, then B A), so all see the same machine
load; reported are medians over rounds and each tree's ratio to the first tree.

Tasks:
- ``predict``: ``edgeseg predict`` end to end (process start to exit) on the NIfTI case to a
  NIfTI, and on the DICOM series to a DICOM SEG, with ``auto`` (its probe choice set to
  ``--choice`` in every tree's cache, so all start the same engine) and with ``onnxruntime``.
- ``api``: ``Segmenter.predict_volume`` on the case already in memory, ms per slice (best of 3
  calls after one warm-up call, in one child process per tree and round).
- ``bench``: ``edgeseg bench`` (``--no-cold-start``), wall time of the whole command.
- ``serve``: one ``edgeseg serve`` per tree, all started first and kept running; this
  checkout's load client (``run_load``) drives them in turns: requests/s of the network model
  (float32 tensors) and of the pipeline model (512x512 int16 slices), and the server's CPU
  time per request (on a shared machine requests/s moves by 20 % between rounds; CPU time far less).
- ``node``: one ``edgeseg listen`` per tree; ``storescu`` sends the series, and the time from
  its start to the SEG file in the node's folder is taken (it includes the node's ``--idle``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = ("predict", "api", "bench", "serve", "node")

API_CODE = """
import json, sys, time
from edgeseg.runtime.readers import read_input
from edgeseg.runtime.segmenter import Segmenter
volume, _ = read_input(sys.argv[1])
with Segmenter.load(sys.argv[2], backend=sys.argv[3]) as seg:
    seg.predict_volume(volume)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        seg.predict_volume(volume)
        times.append(time.perf_counter() - start)
print(json.dumps({"ms_per_slice": 1000 * min(times) / volume.hu.shape[0], "backend": seg.backend}))
"""


def timed(argv: list[str], env: dict, cwd: Path) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, its stdout) of one process that must succeed."""
    with tempfile.TemporaryFile(mode="w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.stdout.close()
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(argv[:5])} failed: {err.read()[-800:]}")
    return wall, usage.ru_utime + usage.ru_stime, out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def fix_choice(cache: Path, choice: str) -> None:
    """Set every probe record in ``cache`` to ``choice``, as benchmarks/cold_start_ab.py does."""
    probe = cache / "backend-probe.json"
    records = json.loads(probe.read_text())
    for entry in records.values():
        entry["choice"] = choice
    probe.write_text(json.dumps(records))


class Turns:
    """The trees, their environments and the samples of every measure, taken in turns."""

    def __init__(self, args, tmp: Path):
        self.args, self.tmp = args, tmp
        self.trees = dict(t.split("=", 1) for t in args.tree)
        self.envs = {}
        for name, root in self.trees.items():
            cache = tmp / f"cache-{name}"
            self.envs[name] = dict(os.environ, PYTHONPATH=str(Path(root).resolve()), EDGESEG_CACHE_DIR=str(cache),
                                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        self.samples: dict[tuple[str, str], list[float]] = {}

    def py(self, *argv: str) -> list[str]:
        return [sys.executable, *argv]

    def record(self, tree: str, metric: str, value: float) -> None:
        self.samples.setdefault((metric, tree), []).append(value)

    def prepare(self) -> None:
        """Fill each tree's caches and fix ``auto``'s choice, then check what each tree loads."""
        for name, env in self.envs.items():
            out = self.tmp / f"{name}-warm.nii.gz"
            argv = self.py("-m", "edgeseg", "predict", self.args.bundle, self.args.nifti, "--out", str(out), "--quiet")
            timed(argv, env, self.tmp)  # the probe
            fix_choice(Path(env["EDGESEG_CACHE_DIR"]), self.args.choice)
            _, _, said = timed(argv, env, self.tmp)  # that engine's compiled-model cache
            _, _, where = timed(self.py("-c", "import edgeseg; print(edgeseg.__file__)"), env, self.tmp)
            print(f"{name}: {where.strip()}; {said.strip()}", flush=True)

    def order(self, round_no: int) -> list[str]:
        names = list(self.trees)
        return names if round_no % 2 == 0 else names[::-1]

    def predict(self, tree: str) -> None:
        env = self.envs[tree]
        for backend in ("auto", "onnxruntime"):
            for source, suffix in ((self.args.nifti, ".nii.gz"), (self.args.dicom, ".seg.dcm")):
                out = self.tmp / f"{tree}-out{suffix}"
                out.unlink(missing_ok=True)
                wall, cpu, _ = timed(self.py("-m", "edgeseg", "predict", self.args.bundle, source, "--out", str(out),
                                             "--backend", backend, "--quiet"), env, self.tmp)
                label = f"predict {backend} -> {'NIfTI' if suffix == '.nii.gz' else 'DICOM SEG'}"
                self.record(tree, f"{label}, wall s", wall)
                self.record(tree, f"{label}, CPU s", cpu)

    def api(self, tree: str) -> None:
        for backend in (self.args.choice, "onnxruntime"):
            _, _, out = timed(self.py("-c", API_CODE, self.args.nifti, self.args.bundle, backend),
                              self.envs[tree], self.tmp)
            self.record(tree, f"predict_volume {backend}, ms/slice", json.loads(out)["ms_per_slice"])

    def bench(self, tree: str) -> None:
        report = self.tmp / f"{tree}-bench.json"
        wall, cpu, _ = timed(self.py("-m", "edgeseg", "bench", self.args.bundle, "--backend", self.args.choice,
                                     "--backend", "onnxruntime:int8", "--size", "512", "--batch", "1,8",
                                     "--runs", "20", "--no-cold-start", "--json", str(report)),
                             self.envs[tree], self.tmp)
        self.record(tree, "edgeseg bench, wall s", wall)
        self.record(tree, "edgeseg bench, CPU s", cpu)

    @contextlib.contextmanager
    def servers(self, kind: str):
        """One server (``serve``) or DICOM node (``node``) per tree, running for the whole block."""
        procs, ports, logs = {}, {}, []
        try:
            for tree, env in self.envs.items():
                ports[tree] = port = free_port()
                log = tempfile.TemporaryFile(mode="w+")
                logs.append(log)
                if kind == "serve":
                    argv = self.py("-m", "edgeseg", "serve", self.args.bundle, "--port", str(port), "--backend",
                                   self.args.serve_backend, "--max-batch", "8")
                else:
                    folder = self.tmp / f"{tree}-node"
                    folder.mkdir()
                    argv = self.py("-m", "edgeseg", "listen", self.args.bundle, "--port", str(port), "--out",
                                   str(folder), "--idle", "0.5", "--backend", self.args.choice)
                procs[tree] = subprocess.Popen(argv, env=env, cwd=self.tmp, stdout=log, stderr=log)
            for tree, proc in procs.items():
                wait_port(ports[tree], proc)
            self.pids = {tree: proc.pid for tree, proc in procs.items()}
            yield ports
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for log in logs:
                log.close()

    def serve_round(self, tree: str, port: int) -> None:
        for model, label in (("edgeseg", "network"), ("edgeseg-pipeline", "pipeline 512")):
            before = cpu_seconds(self.pids[tree])
            result = self.load(f"127.0.0.1:{port}", model)
            used = cpu_seconds(self.pids[tree]) - before
            if result["errors"]:
                raise RuntimeError(f"{tree}: {result['first_errors']}")
            self.record(tree, f"serve /v2 {label}, {self.args.clients} clients, requests/s", result["requests_per_s"])
            # CPU time per request moves far less with the machine's load than requests/s
            self.record(tree, f"serve /v2 {label}, server CPU ms/request", 1000 * used / max(result["requests"], 1))

    def load(self, url: str, model: str) -> dict:
        """This checkout's ``run_load``; the pipeline model gets HU slices alone (no spacing
        input, which older servers refuse), so every tree gets the same request."""
        import numpy as np

        from edgeseg.bench import serve_load
        from edgeseg.data.phantom import synth_phantom
        from edgeseg.runtime.manifest import read_manifest

        manifest = read_manifest(self.args.bundle)
        if model == "edgeseg":
            return serve_load.run_load(url, manifest, clients=self.args.clients, seconds=self.args.serve_seconds)
        hu = np.ascontiguousarray(np.clip(synth_phantom("load", 0, shape=(4, 512, 512)).hu[:1], -32768, 32767)
                                  .astype(np.int16))
        body, headers = serve_load.infer_request(hu, "hu", "labels")
        return serve_load.run_load(url, manifest, clients=self.args.clients, seconds=self.args.serve_seconds,
                                   model=model, request=(body, headers, hu.size))

    def node_round(self, tree: str, port: int) -> tuple[float, float]:
        folder = self.tmp / f"{tree}-node"
        for old in folder.glob("*.seg.dcm"):
            old.unlink()
        files = sorted(str(p) for p in Path(self.args.dicom).iterdir())
        start = time.perf_counter()
        subprocess.run(["storescu", "-aec", "EDGESEG", "127.0.0.1", str(port), *files], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sent = time.perf_counter() - start
        deadline = time.monotonic() + 300
        while not list(folder.glob("*.seg.dcm")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{tree}: no SEG after 300 s")
            time.sleep(0.01)
        return sent, time.perf_counter() - start

    def run(self) -> None:
        tasks = self.args.task.split(",")
        self.prepare()
        print(f"load average before: {os.getloadavg()}", flush=True)
        for task in ("predict", "api", "bench"):
            if task in tasks:
                for r in range(self.args.rounds):
                    for tree in self.order(r):
                        getattr(self, task)(tree)
                print(f"{task} done, load {os.getloadavg()}", flush=True)
                self.report()
        if "serve" in tasks:
            with self.servers("serve") as ports:
                for tree in self.trees:  # warm-up
                    self.serve_round(tree, ports[tree])
                self.samples = {k: v for k, v in self.samples.items() if "serve" not in k[0]}
                for r in range(self.args.rounds):
                    for tree in self.order(r):
                        self.serve_round(tree, ports[tree])
            print(f"serve done, load {os.getloadavg()}", flush=True)
            self.report()
        if "node" in tasks:
            with self.servers("node") as ports:
                for tree in self.trees:  # warm-up: the node loads its model at the first series
                    self.node_round(tree, ports[tree])
                for r in range(self.args.rounds):
                    for tree in self.order(r):
                        sent, done = self.node_round(tree, ports[tree])
                        self.record(tree, "node: storescu sent, s", sent)
                        self.record(tree, "node: storescu start to SEG written, s", done)
            print(f"node done, load {os.getloadavg()}", flush=True)
        self.report()

    def report(self) -> None:
        names = list(self.trees)
        print(f"load average after: {os.getloadavg()}; {os.cpu_count()} cores; {self.args.rounds} rounds")
        print("| measure | " + " | ".join(names) + " | " + " | ".join(f"{n}/{names[0]}" for n in names[1:]) + " |")
        print("|---" * (2 * len(names)) + "|")
        metrics = list(dict.fromkeys(m for m, _ in self.samples))
        for metric in metrics:
            med = [statistics.median(self.samples[(metric, n)]) for n in names]
            print(f"| {metric} | " + " | ".join(f"{m:.4g}" for m in med) + " | "
                  + " | ".join(f"{m / med[0]:.3f}" for m in med[1:]) + " |")
        if self.args.json:
            Path(self.args.json).write_text(json.dumps({f"{m}|{t}": v for (m, t), v in self.samples.items()}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=DIR of an edgeseg source tree")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--nifti", required=True, help="a CT volume (.nii.gz)")
    parser.add_argument("--dicom", required=True, help="the same kind of volume as a DICOM series folder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--task", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--choice", default="openvino:int8", help="the engine auto starts in every tree")
    parser.add_argument("--serve-backend", default="onnxruntime:int8",
                        help="the servers' --backend (OpenVINO fails lone requests before 2026-12-05)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--serve-seconds", type=float, default=8.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.bundle, args.nifti, args.dicom = (str(Path(p).resolve()) for p in (args.bundle, args.nifti, args.dicom))
    with tempfile.TemporaryDirectory(prefix="hot-ab-") as name:
        Turns(args, Path(name)).run()


if __name__ == "__main__":
    main()
