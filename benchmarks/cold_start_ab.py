"""Python cold start of two source trees, in turns: process start to first mask, ``auto`` cached.

    python benchmarks/cold_start_ab.py --tree before=DIR --tree after=DIR \\
        --bundle demo=DIR --bundle unet256=DIR [--runs 9] [--choice openvino:int8]

Each tree is an edgeseg source folder (a ``git archive`` of another commit with its built
``_kernels`` extension, or this checkout). For every tree and bundle a first process runs the
backend probe and fills the caches; the probe cache's choice is then set to ``--choice`` for
every tree, so that all of them start the same engine (the probe's own pick depends on the
load of the moment), and a second process fills that engine's compiled-model cache. Then
``--runs`` rounds start one process per tree and bundle in turns, so all see the same machine
load; reported are medians of wall time, CPU time (user + system) and peak resident memory.
The children run in a temporary folder: ``python -c`` puts its working folder first on
``sys.path``, which would otherwise shadow the tree under test. Bytecode is compiled first,
as an installed wheel has it.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cold_start import PY_FIRST_MASK  # noqa: E402
from capi_report import SIDE, timed_process  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=DIR of an edgeseg source tree (repeatable)")
    parser.add_argument("--bundle", action="append", required=True, help="NAME=DIR (repeatable)")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--choice", default="openvino:int8", help="the engine auto starts in every tree")
    args = parser.parse_args()
    from edgeseg.data.phantom import synth_phantom

    trees = dict(t.split("=", 1) for t in args.tree)
    bundles = dict(b.split("=", 1) for b in args.bundle)
    with tempfile.TemporaryDirectory(prefix="cold-ab-") as name:
        tmp = Path(name)
        raw = tmp / "slice.raw"
        np_hu = synth_phantom("bench", 0, shape=(1, SIDE, SIDE)).hu[0]
        np_hu.round().astype("<i2").tofile(raw)
        code = PY_FIRST_MASK.format(side=SIDE)
        envs = {}
        for tree, root in trees.items():
            compileall.compile_dir(str(Path(root) / "edgeseg"), quiet=1)
            for label, bundle in bundles.items():
                cache = tmp / f"cache-{tree}-{label}"
                env = dict(os.environ, PYTHONPATH=root, EDGESEG_CACHE_DIR=str(cache))
                argv = [sys.executable, "-c", code, str(raw), bundle, "auto", "0"]
                timed_process(argv, env, cwd=tmp)  # the probe
                probe = cache / "backend-probe.json"
                choices = json.loads(probe.read_text())
                for entry in choices.values():
                    entry["choice"] = args.choice
                probe.write_text(json.dumps(choices))
                timed_process(argv, env, cwd=tmp)  # that engine's compiled-model cache entry
                envs[(tree, label)] = (argv, env)
        load_before = os.getloadavg()
        samples: dict[tuple[str, str], list] = {key: [] for key in envs}
        for _ in range(args.runs):
            for key, (argv, env) in envs.items():
                samples[key].append(timed_process(argv, env, cwd=tmp))
        load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}; {os.cpu_count()} cores")
    print("| bundle | tree | wall s | CPU s | peak RSS MiB |\n|---|---|---|---|---|")
    for (tree, label), values in sorted(samples.items(), key=lambda kv: (kv[0][1], list(trees).index(kv[0][0]))):
        wall, cpu, rss = (statistics.median(v[i] for v in values) for i in range(3))
        print(f"| {label} | {tree} | {wall:.3f} | {cpu:.3f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
