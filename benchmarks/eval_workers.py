"""Where ``edgeseg evaluate``'s time goes, and its wall time with metric workers, measured in one run.

First each case of DATA is predicted and scored in this process with the prediction
(``Segmenter.predict_volume``) and the metrics (``case_metrics``: Dice, IoU, HD95, false-positive
slices, per-slice Dice) timed apart. Then ``evaluate_checkpoint`` runs with each ``--workers``
value in turn, round after round (interleaved, so load changes on a shared machine hit all of them
alike), and the per-case results of every run are checked to equal the first's. Prints the split,
each setting's median wall time and its ratio to the first setting.

    OMP_NUM_THREADS=1 nice python benchmarks/eval_workers.py CHECKPOINT \\
        --data phantom:cases=6,size=256,slices=96 --workers 0 --workers 1 --workers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from edgeseg.evaluate.case_metrics import case_metrics
from edgeseg.evaluate.model_eval import chosen_postprocess, class_label_values, evaluate_checkpoint


def split_times(checkpoint: str, data: str) -> dict[str, float]:
    """Seconds spent reading (a phantom: making), predicting and scoring DATA's cases, summed over
    the cases, in this process."""
    from edgeseg.data import open_dataset
    from edgeseg.data.slice_set import volume_classes
    from edgeseg.models.checkpoint import checkpoint_spec, load_model
    from edgeseg.runtime.segmenter import Segmenter

    model, payload = load_model(checkpoint)
    spec, names = checkpoint_spec(payload), list(payload["class_names"])
    labels = class_label_values(None, payload)
    post = chosen_postprocess(payload, len(names), None, None)
    spent = {"read_s": 0.0, "predict_s": 0.0, "metrics_s": 0.0}
    with Segmenter.from_module(model, spec, dict(enumerate(names)), post, max_batch=16) as segmenter:
        start = time.perf_counter()
        cases = iter(open_dataset(data, label_values=sorted({v for vals in labels.values() for v in vals})))
        spent["read_s"] += time.perf_counter() - start
        while True:
            start = time.perf_counter()
            vol = next(cases, None)
            read = time.perf_counter()
            if vol is None:
                break
            pred = segmenter.predict_volume(vol, batch_size=16)
            predicted = time.perf_counter()
            case_metrics(pred, volume_classes(vol, labels), names, vol.contiguous, vol.axes_mm)
            for name, took in (("read_s", read - start), ("predict_s", predicted - read),
                               ("metrics_s", time.perf_counter() - predicted)):
                spent[name] += took
    total = sum(spent.values())
    return {**{k: round(v, 2) for k, v in spent.items()}, "metrics_share": round(spent["metrics_s"] / total, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default="phantom:cases=6,size=256,slices=96")
    parser.add_argument("--workers", type=int, action="append", dest="settings")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    settings = args.settings or [0, 1, 2]
    result = {"data": args.data, "load_before": os.getloadavg(), "split": split_times(args.checkpoint, args.data)}
    print(f"split: {result['split']}")
    walls: dict[int, list[float]] = {w: [] for w in settings}
    first = None
    for _ in range(args.rounds):
        for workers in settings:
            start = time.perf_counter()
            run = evaluate_checkpoint(args.checkpoint, args.data, split="all", progress=False, workers=workers)
            walls[workers].append(time.perf_counter() - start)
            first = first or run["cases"]
            if run["cases"] != first:
                raise SystemExit(f"--workers {workers} gave other per-case results than --workers {settings[0]}")
    base = statistics.median(walls[settings[0]])
    result["wall_s"] = {w: [round(t, 2) for t in ts] for w, ts in walls.items()}
    result["ratio_to_first"] = {w: round(statistics.median(ts) / base, 3) for w, ts in walls.items()}
    result["load_after"] = os.getloadavg()
    for w in settings:
        print(f"--workers {w}: median {statistics.median(walls[w]):.2f} s  ratio {result['ratio_to_first'][w]:.3f}")
    print(f"load average before {result['load_before']}, after {result['load_after']}")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
