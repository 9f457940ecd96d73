"""What ``edgeseg listen``'s trim after each series costs per image: the same run with and without it.

Runs ``benchmarks/listen_memory.py listen`` (the command in a child process, the ``mixed`` load:
in turn a series with fresh UIDs, the same series again, a refused association and an echo) in
pairs, with ``--trim-after-series S`` (``malloc_trim(0)`` once a series' SEG is written, at most
once per S seconds) and without it, the order swapped in each pair. From the child's lines after ``--warm`` associations and at the end, both
at rest: its CPU seconds (all threads) and minor page faults per image received, and its RSS at
the end; the ratio on/off of each pair and their median.

    OMP_NUM_THREADS=1 nice python benchmarks/listen_trim_cost.py BUNDLE --pairs 4 --associations 400
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGES_PER_ROUND = 6  # two stores of the 3-image series in each round of 4 associations


def one_run(bundle: str, trim_every: str, associations: int, warm: int, folder: Path) -> dict:
    jsonl = folder / f"run-{trim_every}.jsonl"
    subprocess.run([sys.executable, str(HERE / "listen_memory.py"), "listen", bundle, "--load", "mixed",
                    "--associations", str(associations), "--every", str(warm), "--quiet", "3",
                    "--trim-after-series", trim_every, "--jsonl", str(jsonl)], check=True, stdout=subprocess.DEVNULL)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    start, end = lines[1], lines[-1]  # after the warm-up, and at the end
    images = (associations - warm) // 4 * IMAGES_PER_ROUND
    return {"trim_every": trim_every, "images": images, "cpu_ms_per_image": 1000 * (end["cpu_s"] - start["cpu_s"]) / images,
            "faults_per_image": (end["minflt"] - start["minflt"]) / images, "rss_end_mib": end["rss_kib"] / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--associations", type=int, default=400)
    parser.add_argument("--warm", type=int, default=40, help="associations before the first reading")
    parser.add_argument("--trim-every", default="60", help="the trim's rate for the 'on' runs (seconds)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.associations % args.warm:
        raise SystemExit("--associations must be a multiple of --warm")
    runs, ratios = [], []
    with tempfile.TemporaryDirectory(prefix="listen-trim-cost-") as folder:
        for pair in range(args.pairs):
            modes = [args.trim_every, "inf"] if pair % 2 == 0 else ["inf", args.trim_every]
            done = {mode: one_run(args.bundle, mode, args.associations, args.warm, Path(folder)) for mode in modes}
            on, off = done[args.trim_every], done["inf"]
            ratios.append(on["cpu_ms_per_image"] / off["cpu_ms_per_image"])
            runs += [on, off]
            print(f"pair {pair + 1}: CPU ms/image on {on['cpu_ms_per_image']:.2f} off {off['cpu_ms_per_image']:.2f} "
                  f"(ratio {ratios[-1]:.3f}); faults/image on {on['faults_per_image']:.0f} "
                  f"off {off['faults_per_image']:.0f}; RSS at the end on {on['rss_end_mib']:.1f} "
                  f"off {off['rss_end_mib']:.1f} MiB", flush=True)
    print(f"median CPU ratio on/off: {statistics.median(ratios):.3f} (pairs: "
          + ", ".join(f"{r:.3f}" for r in ratios) + ")")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
