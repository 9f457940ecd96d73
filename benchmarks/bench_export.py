"""pytest-benchmark: ``edgeseg export`` of the default model (U-Net base 32, depth 4, 256x256).

Two exports of the same checkpoint in one run: the FP32 formats only (the baseline) and the
full ``--fp16 --int8`` export with entropy calibration (64 slices) and the parity gate; their
ratio is what FP16 and INT8 cost on top. Each export's per-stage seconds and peak resident
memory (from ``parity.json``) land in the benchmark's ``extra_info``.

``EDGESEG_BENCH_CHECKPOINT`` names a trained default-size checkpoint (e.g. ``runs/msd/best.pt``)
and ``EDGESEG_BENCH_CALIB`` its calibration data (e.g. ``../shared/data/msd_liver_slices``);
without them a default-size model is trained for one epoch on phantom CT (the export's time
and memory do not depend on how well the model is trained; the INT8 gate may then fail, which
still measures the whole export). Run:
``pytest benchmarks -k export_default --benchmark-only``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PHANTOM = "phantom:cases=6,size=256,slices=8"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    if os.environ.get("EDGESEG_BENCH_CHECKPOINT"):
        return Path(os.environ["EDGESEG_BENCH_CHECKPOINT"])
    pytest.importorskip("torch")
    from edgeseg.train.config import TrainConfig
    from edgeseg.train.loop import train

    out = tmp_path_factory.mktemp("bench-train")
    train(TrainConfig(data=PHANTOM, out=str(out), base=32, depth=4, size=256, epochs=1, batch_size=8,
                      augment=False, seed=0), progress=False)
    return out / "best.pt"


def _export(checkpoint: Path, out: Path, settings) -> dict:
    """One export into a fresh folder and cache; the parity report, gate failures included."""
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.verify import ParityError

    reports: list[dict] = []
    try:
        result = export_bundle(checkpoint, out, settings, calib=os.environ.get("EDGESEG_BENCH_CALIB", PHANTOM),
                               cache_dir=out.parent / f"{out.name}-cache", force=True, progress=False,
                               echo=lambda text: reports.append(text))
        return {"passed": True, **result["parity"]}
    except ParityError as exc:
        return {"passed": False, "failure": str(exc), "table": reports[-1] if reports else ""}


@pytest.mark.parametrize("what", ["fp32 formats", "fp16 + int8 (entropy)"])
def test_export_default_model(benchmark, checkpoint, tmp_path, what):
    from edgeseg.export.profiles import ExportSettings

    settings = ExportSettings() if what == "fp32 formats" else ExportSettings(fp16=True, int8=True)
    runs = iter(range(1000))
    benchmark.group = "export, default model"
    report = benchmark.pedantic(lambda: _export(checkpoint, tmp_path / f"bundle{next(runs)}", settings),
                                rounds=1, iterations=1)
    benchmark.extra_info["passed"] = report["passed"]
    if not report["passed"]:  # the gate's table, stage times included, is all a failed export leaves
        benchmark.extra_info["failure"] = report["failure"]
        benchmark.extra_info["table"] = report["table"]
    for entry in report.get("stages", []):
        benchmark.extra_info[entry["name"]] = {"seconds": entry["seconds"], "peak_rss_mb": entry["peak_rss_mb"]}
    if "peak_rss_mb" in report:
        benchmark.extra_info["process_peak_rss_mb"] = report["peak_rss_mb"]
