"""export_bundle: checkpoint -> artifacts -> parity gate -> bundle, in that order, or nothing.

Inputs are checked before any work (output folder, checkpoint, calibration and verification
data); artifacts are written into a staged folder, run through the gate, and only then given
a manifest and renamed into place. Later steps (e.g. a Triton model repository) take the
finished bundle folder this returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.atomic import check_output_folder
from edgeseg.errors import DataError, EdgesegError, require
from edgeseg.data.open import recorded_slice_options
from edgeseg.export.audit import row_runners
from edgeseg.export.bundle import artifact_entry, build_manifest, check_output, staged_bundle, write_manifest
from edgeseg.export.gate_memory import (GATE_BYTES_ENV, gate_max_bytes, gate_slice_bytes, gate_slice_limit,
                                        size_text)
from edgeseg.export.profiles import MIN_CALIB_SLICES, ExportSettings
from edgeseg.export.stages import process_peak_mb, record_stages, stage
from edgeseg.export.verify import ParityError, failures, parity_table
from edgeseg.progress import progress_bar
from edgeseg.runtime.manifest import network_tensors
from edgeseg.runtime.postprocess_options import PostprocessOptions

log = logging.getLogger("edgeseg.export")

FILES = {("torchscript", "fp32"): "model.ts", ("onnx", "fp32"): "model.onnx",
         ("onnx", "fp16"): "model.fp16.onnx", ("onnx", "int8"): "model.int8.onnx"}
LATENCY_THREADS = 1


def export_bundle(checkpoint: str | Path, out: str | Path, settings: ExportSettings, calib: str | None = None,
                  verify_data: str | None = None, force: bool = False, cache_dir: str | Path | None = None,
                  intensity: str | None = None, progress: bool = True,
                  echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Export ``checkpoint`` as a verified bundle at ``out``; returns bundle path, manifest and parity.

    ``settings`` says which artifacts to make (see :class:`ExportSettings`); ``calib`` is the
    INT8 calibration data, ``verify_data`` the gate's held-out data (default: the checkpoint's
    validation cases). ``cache_dir`` keeps INT8 graphs and the TensorRT timing cache between
    runs. Raises ParityError, with the report already echoed, when an artifact fails the gate.
    """
    with record_stages() as stages:
        return _export(checkpoint, out, settings, calib, verify_data, force, cache_dir, intensity, progress, echo,
                       stages)


def _export(checkpoint, out, settings: ExportSettings, calib, verify_data, force, cache_dir, intensity, progress,
            echo, stages: list[dict]) -> dict[str, Any]:
    """export_bundle's body, inside an open stage record (``stages``) that parity.json reports."""
    from edgeseg.export.int8 import load_calibration
    from edgeseg.export.verify import load_verify_set
    from edgeseg.runtime.manifest import sha256_file

    checkpoint = Path(checkpoint)
    target = check_output(out, force, inputs=(("the checkpoint", checkpoint), ("the calibration data", calib),
                                              ("the verification data", verify_data)))
    if cache_dir is not None and (settings.int8 or settings.trt):
        # the cache is written after calibration: an unwritable one must fail now, by its own name
        check_output_folder(cache_dir, "the export cache folder (--cache-dir)")
    if settings.int8 and not calib:
        raise DataError("--int8 needs calibration data: pass --calib DATA")
    # torch (a second or more to import) only once the output and settings are accepted
    require("torch", "train", "edgeseg export")
    from edgeseg.models.checkpoint import checkpoint_spec, load_model

    with stage("load-checkpoint"):
        model, payload = load_model(checkpoint)
    spec = checkpoint_spec(payload)
    labels = dict(enumerate(payload["class_names"]))
    calib_set = None
    if settings.int8:
        held_out, read_as, train_config = set(), {}, payload.get("train_config") or {}
        if _same_source(calib, train_config.get("data")):
            split = payload.get("split") or {}
            held_out = set(split.get("val") or []) | set(split.get("test") or [])
            # The run's own data is read as training read it.
            read_as = {"intensity": intensity or train_config.get("intensity"),
                       "slice_options": recorded_slice_options(train_config)}
        with stage("load-calibration"):
            calib_set = load_calibration(calib, spec, settings.calib_slices, payload.get("label_values"),
                                         read_as.get("intensity", intensity), exclude_cases=held_out,
                                         slice_options=read_as.get("slice_options"))
        drawn = len(calib_set.images)
        if drawn < MIN_CALIB_SLICES:
            left_out = " outside the held-out cases" if held_out else ""
            raise DataError(f"calibration data {calib} gives {drawn} slice{'s' if drawn != 1 else ''}{left_out}; "
                            f"INT8 calibration needs at least {MIN_CALIB_SLICES}: give more data with --calib")
    # the gate holds every held-out slice's logits at once: at a large spec size fewer slices fit
    gate_slices = gate_slice_limit(spec, len(labels), settings.verify_slices)
    if gate_slices < settings.verify_slices:
        echo(f"parity gate: {gate_slices} held-out slices, not {settings.verify_slices}: at {spec.size[0]}x"
             f"{spec.size[1]} one slice takes {size_text(gate_slice_bytes(spec, len(labels)))} in the gate, whose "
             f"limit is {size_text(gate_max_bytes())} ({GATE_BYTES_ENV})")
    with stage("load-verify"):
        verify_set = load_verify_set(payload, spec, verify_data, gate_slices, intensity)
    if settings.gate_metric == "truth" and verify_set.truth is None:
        raise DataError(f"--gate-metric truth needs labelled held-out slices; {verify_set.source} has no labels")
    with staged_bundle(target, replace=force) as folder:
        made, calibration, notes = _write_artifacts(folder, model, spec, labels, settings, verify_set, calib_set,
                                                    cache_dir, progress)
        made = [(*item, None) for item in made]
        if settings.trt:
            with stage("tensorrt"):
                made += _tensorrt(folder, settings, spec, cache_dir, echo)
        with stage("gate"):
            post = PostprocessOptions.from_dict(payload.get("postprocess"), len(labels))
            report = _gate(folder, model, made, verify_set, settings, spec, labels, post, progress)
        if gate_slices < settings.verify_slices:  # parity.json says why the gate saw fewer slices than asked
            report["slice_limit"] = {"asked": settings.verify_slices, "slice_bytes": gate_slice_bytes(spec, len(labels)),
                                     "gate_max_bytes": gate_max_bytes()}
        report["stages"] = stages
        report["peak_rss_mb"] = round(process_peak_mb(), 1)
        echo(parity_table(report))
        if not report["passed"]:
            raise ParityError(f"parity gate failed: {'; '.join(failures(report))}; no bundle written",
                              report=report, calibration=calibration)
        excluded = report.get("excluded", {})
        entries = [artifact_entry(folder, file, fmt, precision, fingerprint=fingerprint, extra=extra,
                                  excluded=excluded.get(file), scored=row_runners(report["results"], file))
                   for fmt, precision, file, extra, fingerprint in made]
        manifest = build_manifest(payload, checkpoint, sha256_file(checkpoint), spec, entries, settings.max_batch,
                                  calibration)
        write_manifest(folder, manifest, report)
    return {"bundle": target, "manifest": manifest, "parity": report, "notes": notes}


def _same_source(a: str | None, b: str | None) -> bool:
    """True when two data source strings name the same data (equal text or the same path)."""
    if not a or not b:
        return False
    if str(a) == str(b):
        return True
    return Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve()


def _write_artifacts(folder: Path, model, spec, labels, settings: ExportSettings, verify_set, calib_set,
                     cache_dir, progress: bool) -> tuple[list, dict | None, list[str]]:
    """Write each requested artifact; returns [(format, precision, file, extra)], calibration record, notes."""
    import torch

    from edgeseg.export.fp16 import convert_fp16
    from edgeseg.export.int8 import quantize_int8
    from edgeseg.export.onnx_export import export_onnx, set_metadata
    from edgeseg.export.torchscript import export_torchscript

    example = torch.from_numpy(np.ascontiguousarray(verify_set.images[: min(2, settings.max_batch)]))
    made, calibration, notes = [], None, []
    if "torchscript" in settings.formats:
        with stage("torchscript"):
            export_torchscript(model, example, spec, labels, folder / FILES["torchscript", "fp32"])
        made.append(("torchscript", "fp32", FILES["torchscript", "fp32"], {"frozen": True}))
    onnx_fp32 = folder / FILES["onnx", "fp32"]
    if "onnx" in settings.formats:
        with stage("onnx"):
            made.append(("onnx", "fp32", onnx_fp32.name, export_onnx(model, example, spec, labels, onnx_fp32)))
    if settings.fp16:
        with stage("fp16-convert"):
            made.append(("onnx", "fp16", FILES["onnx", "fp16"], convert_fp16(onnx_fp32, folder / FILES["onnx", "fp16"])))
    if settings.int8:
        dst = folder / FILES["onnx", "int8"]
        with stage("int8-calibrate"):
            calibration = quantize_int8(onnx_fp32, dst, calib_set, spec, settings.calib_method, cache_dir,
                                        progress=progress, scheme=settings.int8_activations)
        made.append(("onnx", "int8", dst.name, {"calibration_method": settings.calib_method,
                                                "int8_scheme": settings.int8_activations}))
        notes.append(f"INT8 calibration: {calibration['slices']} slices, {settings.calib_method}, "
                     f"{settings.int8_activations} scheme, cache {calibration['cache']}")
    import onnx

    for fmt, _, file, _ in made:  # converters may drop metadata_props; every ONNX file carries spec and labels
        if fmt == "onnx":
            graph = onnx.load(str(folder / file))
            set_metadata(graph, spec, labels)
            onnx.save(graph, str(folder / file))
    return made, calibration, notes


def _gate(folder: Path, model, made: list, verify_set, settings: ExportSettings, spec, labels,
          post: PostprocessOptions, progress: bool) -> dict:
    """Score every artifact, on every runner ``auto`` may pick for it here, against the model
    itself, all through the runtime's Segmenter (and the FP16 half-precision emulation). Masks
    are compared after the bundle's per-slice component filters (``post``), as deployed.

    A runner whose row fails is excluded from ``auto`` for that artifact (``report["excluded"]``:
    file -> runner -> reason); the report passes while every artifact passes on some runner. The
    runners with a row are those the manifest records as scored (:func:`edgeseg.export.audit.row_runners`).
    """
    from edgeseg.export.fp16 import HALF_EMULATION, ORT_EMULATION, half_check_slices, half_precision_logits
    from edgeseg.export.gate_rows import GateJudge, gate_logits, runner_row
    from edgeseg.export.onnx_reference import held_out_record
    from edgeseg.export.verify import GATE_VERSION, measure_latency
    from edgeseg.runtime.runners import runners_for
    from edgeseg.runtime.runners.onnxruntime import OnnxRuntimeRunner
    from edgeseg.runtime.segmenter import Segmenter

    images, truth, batch = verify_set.images, verify_set.truth, settings.max_batch
    with stage("reference"), Segmenter.from_module(model, spec, labels, max_batch=batch) as segmenter:
        reference = gate_logits(segmenter.logits, images, batch, "gate: fp32 reference", progress)
    judge = GateJudge(spec, labels, batch, verify_set, reference, settings.max_dice_drop, settings.gate_metric,
                      {"rules": post.slice_rules(spec.size, spec.size), "structure_px": settings.structure_px,
                       "volume_filtered": {c for c, o in post.classes.items() if o.filters_volume}}, progress)
    inputs, outputs = network_tensors(spec, len(labels))
    results, excluded, dead = [], {}, []
    for fmt, precision, file, extra, fingerprint in progress_bar(made, desc="verify", unit="artifact",
                                                                 shown=progress):
        entry = artifact_entry(folder, file, fmt, precision, fingerprint=fingerprint, extra=extra)
        rows = []
        for cls in (c for c in runners_for(fmt, precision) if c.available()):
            try:
                rows.append((cls.name, runner_row(judge, folder, entry, cls)))
            except EdgesegError as exc:
                excluded.setdefault(file, {})[cls.name] = f"does not load: {exc}"
        if precision == "fp16":
            pick = half_check_slices(images, truth, settings.fp16_check, settings.fp16_check_slices)
            with stage("fp16-half-check"):
                half = gate_logits(lambda part: half_precision_logits(model, part, batch), images[pick], batch,
                                   f"gate: {entry.key} in float16", progress)
            row = judge.row(entry, half, pick)
            for found in row["structure_changes"]:  # numbered as slices of the whole held-out set
                found["slice"] = int(pick[found["slice"]])
            subset = {} if len(pick) == len(images) else {"slices": int(len(pick))}
            rows.append((None, {"key": entry.key, "file": file, "sha256": entry.sha256, "precision": precision,
                                "run_on": HALF_EMULATION, **row, **subset}))
        for name, row in rows:
            if name is not None and not row["passed"]:
                excluded.setdefault(file, {})[name] = failures({"results": [row]})[0].split(": ", 1)[1]
        # An artifact fails when no runner passes it, or when the half-precision model itself does.
        if not any(name and row["passed"] for name, row in rows) or any(not name and not row["passed"] for name, row in rows):
            dead.append(file)
        results += [row for _, row in rows]
    report = {"reference": "pytorch-fp32-eager-cpu", "data": verify_set.source, "cases": verify_set.cases,
              "slices": int(len(images)), "labelled": truth is not None, "thresholds": settings.max_dice_drop,
              "gate_version": GATE_VERSION, "gate_metric": settings.gate_metric, "structure_px": settings.structure_px,
              "postprocess": post.to_dict(),
              "fp32_margin": 1e-4, "results": results, "passed": not dead,
              "held_out": held_out_record(verify_set)}  # how edgeseg gate without torch reads the same slices
    if excluded:
        report["excluded"] = excluded
    if any(p == "fp16" for _, p, _, _, _ in made):
        report["fp16_emulation"] = [ORT_EMULATION, HALF_EMULATION]
        half = [r for r in results if r["run_on"] == HALF_EMULATION]
        report["fp16_check"] = {"mode": settings.fp16_check, "slices": half[0].get("slices", int(len(images)))}
    if settings.int8 and "onnx" in settings.formats:
        one = np.ascontiguousarray(images[:1])
        timed = {}
        for precision in ("fp32", "int8"):
            file = FILES["onnx", precision]
            with OnnxRuntimeRunner(folder / file, artifact_entry(folder, file, "onnx", precision), inputs, outputs, 1,
                                   threads=LATENCY_THREADS) as runner, stage(f"latency-{precision}"):
                timed[precision] = measure_latency(runner.infer, one)
        report["latency"] = {"batch": 1, "threads": LATENCY_THREADS, "onnx-fp32_ms": timed["fp32"],
                             "onnx-int8_ms": timed["int8"], "ratio": timed["int8"] / timed["fp32"]}
    return report


def _tensorrt(folder: Path, settings: ExportSettings, spec, cache_dir, echo) -> list:
    """Build the TensorRT engine from the lowest-precision ONNX graph when tensorrt and a GPU
    are present, else say in one line which is missing and go on. ``trtexec.sh`` in the bundle
    holds the equivalent trtexec commands (TensorRT 10 and 11) either way, so a device without
    Python can build the engine from the bundle's ONNX. Returns [(format, precision, file,
    extra, fingerprint)] for the engine built, or []."""
    import importlib

    from edgeseg.atomic import atomic_write_text

    precision = "int8" if settings.int8 else "fp16" if settings.fp16 else "fp32"
    try:
        trt_export = importlib.import_module("edgeseg.export.tensorrt")
    except ImportError as exc:
        echo(f"tensorrt: the TensorRT export module is not available ({exc}); skipped the engine")
        return []
    chw, engine_name = (1, *spec.size), f"model.{precision}.plan"
    ten, eleven = (trt_export.trtexec_command(trt_export.plan_build(f"{major}.0", precision, chw, settings.max_batch),
                                              "image", engine_name, "timing.cache") for major in (10, 11))
    atomic_write_text(folder / "trtexec.sh", "#!/bin/sh\n# Builds the engine from this bundle's ONNX; run it in the bundle folder.\n"
                      f"# TensorRT 10 (explicit precision flags):\n{ten}\n"
                      f"# TensorRT 11 (strongly typed: precision from the graph); use this line instead:\n# {eleven}\n")
    timing_cache = Path(cache_dir) / "tensorrt.timing" if cache_dir else folder.parent / ".edgeseg-tensorrt.timing"
    try:
        trt = require("tensorrt", "tensorrt", "building TensorRT engines")
        here = trt_export.machine_fingerprint()
        plan = trt_export.plan_build(trt.__version__, precision, chw, settings.max_batch)
        engine = trt_export.engine_file_name(precision, here["compute_capability"])
        fingerprint = trt_export.build_engine(folder / FILES["onnx", precision], folder / engine, plan, "image", timing_cache)
    except EdgesegError as exc:
        echo(f"tensorrt: {exc}; the other artifacts are exported (trtexec.sh in the bundle builds the engine)")
        return []
    return [("tensorrt", precision, engine, {"from": FILES["onnx", precision]}, fingerprint)]
