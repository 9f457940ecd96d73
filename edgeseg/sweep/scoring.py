"""A sweep point's validation Dice: FP32 through the torch runner, INT8 on every runner here that
may run the bundle's INT8 graph, and which of those the point deploys.

The deployed INT8 Dice is the one of the runner the ``auto`` backend picked when the point's
latency was measured (``backend`` in its result, e.g. ``openvino:int8``): the latency and the Dice
of a point are then of one and the same deployment. The same INT8 graph gives different masks on
different runners (their int8 kernels round differently), so scoring it on another runner than
the one ``auto`` runs would report a Dice the user never gets.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("edgeseg.sweep")


def int8_runners(bundle: Path, deployed: str | None = None) -> list[str]:
    """``name:int8`` of each runner that may run one of the bundle's INT8 artifacts here: a CPU
    runner whose library is installed and that the gate did not exclude for it, and ``deployed``
    (the runner ``auto`` picked, which may be a GPU one) when it is an INT8 one that can run here
    (a result measured on another machine may name one that cannot); ``deployed`` first. Empty
    when the bundle has no INT8 artifact."""
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.runners import runners_for

    names: list[str] = []
    for entry in (a for a in read_manifest(bundle).artifacts if a.precision == "int8"):
        names += [f"{cls.name}:int8" for cls in runners_for(entry.format)
                  if "int8" in cls.precisions and cls.device_kind == "cpu" and cls.name not in entry.excluded
                  and cls.available()]
    if deployed is not None and deployed.endswith(":int8") and _available(deployed.split(":")[0]):
        names = [deployed] + [n for n in names if n != deployed]
    return list(dict.fromkeys(names))


def _available(runner: str) -> bool:
    """Whether the named runner's library is installed here; False for an unknown name (a result
    from another version). A GPU runner whose library is here but not its device passes this and
    is caught when it fails to load (``validation_dice``)."""
    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.runners import runner_class

    try:
        return runner_class(runner).available()
    except EdgesegError:
        return False


def validation_dice(checkpoint: Path, bundle: Path | None, data: str, intensity: str | None,
                    deployed: str | None = None, fp32: bool = True) -> dict[str, Any]:
    """Per-case foreground Dice on the run's validation cases, mean over cases: FP32 (the
    checkpoint through the torch runner; left out when ``fp32`` is false) and INT8 on each of
    ``int8_runners(bundle, deployed)`` (none without a bundle, when the gate refused INT8), as
    ``dice_int8_runners`` and ``dice_int8_runners_per_case``, plus the deployed INT8 fields of
    ``deployed_int8`` for ``deployed``. A runner that fails to load or to run here is left out and
    named with its error in ``dice_int8_unscored``; a failure of the torch runner, or of
    ``deployed`` while predicting, is raised (it is what the point ships). A run without
    validation cases is a DataError."""
    from edgeseg.data import open_dataset
    from edgeseg.data.open import recorded_slice_options
    from edgeseg.data.slice_set import check_window, volume_classes
    from edgeseg.errors import BackendError, DataError
    from edgeseg.evaluate.model_eval import select_cases
    from edgeseg.metrics import dice
    from edgeseg.models.checkpoint import checkpoint_spec, load_model
    from edgeseg.runtime.postprocess_options import PostprocessOptions
    from edgeseg.runtime.segmenter import Segmenter

    model, payload = load_model(checkpoint)
    spec, names = checkpoint_spec(payload), list(payload["class_names"])
    post = PostprocessOptions.from_dict(payload.get("postprocess"), len(names))
    volumes, _ = select_cases(open_dataset(data, intensity=intensity, **recorded_slice_options(payload.get("train_config"))),
                              payload, "val")
    segmenters = {"fp32": Segmenter.from_module(model, spec, dict(enumerate(names)), post, max_batch=8)} if fp32 else {}
    unscored: dict[str, str] = {}
    for backend in ([] if bundle is None else int8_runners(bundle, deployed)):
        try:
            segmenters[backend] = Segmenter.load(bundle, backend=backend)
        except BackendError as exc:
            # e.g. a GPU runner whose library is here but not its device, or a runtime that
            # cannot compile the graph on this CPU: the point says so (dice_int8_unscored), and
            # when it is the runner auto picked, that its INT8 Dice is not auto's (report.int8_scoring)
            log.warning("cannot score the INT8 graph on %s here: %s", backend, exc)
            unscored[backend] = str(exc)
    if not volumes:
        raise DataError(f"{checkpoint}: the run has no validation case to score")
    scores: dict[str, list[float]] = {k: [] for k in segmenters}
    for vol in volumes:
        check_window(vol, spec)
        truth = volume_classes(vol, payload["label_values"])
        for key, seg in list(segmenters.items()):
            try:
                pred = seg.predict_volume(vol)  # batches of at most the bundle's max_batch
            except BackendError as exc:
                if key == "fp32" or key == deployed:
                    raise
                log.warning("cannot score the INT8 graph on %s here: %s", key, exc)
                unscored[key] = str(exc)
                del segmenters[key], scores[key]
                continue
            scores[key].append(float(np.mean([dice(pred == c, truth == c) for c in range(1, len(names))])))
    runners = {k: v for k, v in scores.items() if k != "fp32"}
    result: dict[str, Any] = {"val_cases": [v.case_id for v in volumes],
                              "dice_int8_runners": {k: round(float(np.mean(v)), 4) for k, v in runners.items()},
                              "dice_int8_runners_per_case": {k: [round(x, 4) for x in v] for k, v in runners.items()},
                              "dice_int8_unscored": unscored}
    if fp32:
        result.update(dice_fp32=round(float(np.mean(scores["fp32"])), 4),
                      dice_fp32_per_case=[round(x, 4) for x in scores["fp32"]])
    return {**result, **deployed_int8(result, deployed)}


def deployed_int8(result: dict[str, Any], deployed: str | None) -> dict[str, Any]:
    """``dice_int8``, ``dice_int8_per_case`` and ``dice_int8_backend`` of a result holding
    ``dice_int8_runners``: those of ``deployed`` (the runner ``auto`` picked) when it was scored;
    otherwise (``auto`` picked an FP32 runner, or one not scored here) those of the first runner
    scored, named in ``dice_int8_backend`` so that a reader sees which it is; all ``None`` when
    the bundle has no INT8 artifact (the gate refused it)."""
    runners = result.get("dice_int8_runners") or {}
    if not runners:
        return {"dice_int8": None, "dice_int8_per_case": [], "dice_int8_backend": None}
    name = deployed if deployed in runners else next(iter(runners))
    return {"dice_int8": runners[name], "dice_int8_per_case": result["dice_int8_runners_per_case"][name],
            "dice_int8_backend": name}
