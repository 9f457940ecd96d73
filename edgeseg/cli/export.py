"""``edgeseg export``: a checkpoint -> a verified bundle."""

from __future__ import annotations

from pathlib import Path

import click

from edgeseg.atomic import check_output_folder
from edgeseg.cli.input_limits import input_limit_options
from edgeseg.cli.quiet_option import quiet_option
from edgeseg.cli.renamed_option import overwrite_option
from edgeseg.errors import DataError, require


def _cache_default() -> Path:
    """``export/`` in the cache folder the runtime's caches use ($EDGESEG_CACHE_DIR, else
    $XDG_CACHE_HOME/edgeseg, else ~/.cache/edgeseg): one variable moves every cache."""
    from edgeseg.runtime.compiled_cache import cache_root

    try:
        return cache_root() / "export"
    except OSError as exc:  # no home folder
        raise DataError(f"no cache folder for INT8 graphs: {exc.strerror}; set EDGESEG_CACHE_DIR or "
                        "--cache-dir") from None


@click.command("export")
@input_limit_options
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle folder to create.")
@click.option("--profile", default=None, help="Target profile: a name in export/ (cpu-int8, gpu-fp16, edge-int8) or a TOML path; flags override it.")
@click.option("--formats", default=None, help="FP32 formats, comma-separated: torchscript,onnx (default both).")
@click.option("--fp16/--no-fp16", default=None, help="Also export the FP16 ONNX graph.")
@click.option("--int8/--no-int8", default=None, help="Also export the INT8 (Q/DQ) ONNX graph; needs --calib.")
@click.option("--calib", default=None, help="INT8 calibration data: any data source edgeseg reads, or a .npy of pre-processed slices.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"], case_sensitive=False), default=None, help="INT8 calibration method (default entropy).")
@click.option("--calib-slices", type=int, default=None, help="Calibration slices drawn, stratified (default 64).")
@click.option("--trt/--no-trt", default=None, help="Also build a TensorRT engine (needs tensorrt and a GPU; skipped with a message otherwise).")
@click.option("--max-batch", type=int, default=None, help="Largest batch the artifacts take (default 8).")
@click.option("--verify-data", default=None, help="Held-out data for the parity gate (default: the checkpoint's validation cases).")
@click.option("--verify-slices", type=int, default=None, help="Slices the gate runs every artifact on (default 64).")
@click.option("--fp16-check", type=click.Choice(["subset", "full"], case_sensitive=False), default=None,
              help="Real float16 check (torch half kernels, slow on CPUs): on a stratified subset of the held-out slices (default) or all of them.")
@click.option("--fp16-check-slices", type=int, default=None, help="Slices of the subset float16 check (default 8).")
@click.option("--max-dice-drop-fp16", type=float, default=None, help="Largest 1 - Dice(FP16 mask, FP32 mask) allowed (default 0.002).")
@click.option("--max-dice-drop-int8", type=float, default=None, help="Largest drop of the worst class allowed for INT8 (default 0.01).")
@click.option("--gate-metric", type=click.Choice(["agreement", "truth"], case_sensitive=False), default=None,
              help="What a class's drop is: 1 - Dice against the FP32 model's mask (agreement, the default; no labels "
                   "needed) or the fall of Dice against the held-out labels (truth; for soft-bordered lesion classes).")
@click.option("--int8-scheme", type=click.Choice(["cpu", "tensorrt"], case_sensitive=False), default=None,
              help="INT8 activations: unsigned with a zero point for ONNX Runtime / OpenVINO on any x86 CPU (cpu, the "
                   "default), or signed with zero points 0 as TensorRT needs (tensorrt, the default with --trt).")
@click.option("--structure-px", type=int, default=None,
              help="Smallest structure (pixels at model resolution) an FP16/INT8 artifact may not erase or invent on a "
                   "held-out slice, after the bundle's component filters (default 16; 0: no such check).")
@click.option("--intensity", default=None, help="What slice-folder pixels mean for --calib / --verify-data: 'hu-clipped:0,255' or 'window:LO,HI'.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Cache for INT8 graphs and the TensorRT timing cache [default: $EDGESEG_CACHE_DIR/export, else ~/.cache/edgeseg/export].")
@click.option("--triton", "triton_repo", default=None, type=click.Path(file_okay=False),
              help="Also write a Triton model repository for the bundle to this folder.")
@overwrite_option("Replace an existing bundle at --out (and the --triton repository's edgeseg models).")
@quiet_option
def command(checkpoint, out, profile, formats, fp16, int8, calib, calib_method, calib_slices, trt, max_batch,
            verify_data, verify_slices, fp16_check, fp16_check_slices, max_dice_drop_fp16, max_dice_drop_int8, gate_metric, int8_scheme, structure_px, intensity, cache_dir, triton_repo, overwrite, quiet) -> None:
    """Export CHECKPOINT to a bundle: TorchScript, ONNX FP32 (+ FP16, INT8, TensorRT), each
    checked against the FP32 model on held-out slices before the bundle is written."""
    from edgeseg.export.profiles import ExportSettings, load_profile

    if triton_repo:
        from edgeseg.export.triton import check_repo_output

        check_repo_output(triton_repo, overwrite, out, "--triton",
                          keep=(("the checkpoint's folder", Path(checkpoint).resolve().parent),))
        check_output_folder(triton_repo, "--triton", staged=True)
    settings = load_profile(profile) if profile is not None else ExportSettings()  # "" is refused by name
    settings = settings.override(
        formats=tuple(f.strip() for f in formats.split(",") if f.strip()) if formats else None,
        fp16=fp16, int8=int8, trt=trt, calib_method=calib_method, calib_slices=calib_slices, max_batch=max_batch,
        verify_slices=verify_slices, fp16_check=fp16_check, fp16_check_slices=fp16_check_slices, max_dice_drop={"fp16": max_dice_drop_fp16, "int8": max_dice_drop_int8},
        gate_metric=gate_metric, int8_scheme=int8_scheme, structure_px=structure_px,
    )
    int8_only = {"--calib": calib, "--calib-method": calib_method, "--calib-slices": calib_slices,
                 "--int8-scheme": int8_scheme, "--max-dice-drop-int8": max_dice_drop_int8}
    given = [flag for flag, value in int8_only.items() if value is not None]
    if given and not settings.int8:  # the user meant an INT8 graph, or these flags do nothing
        raise DataError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} up INT8, but this export writes "
                        "no INT8 graph; add --int8 (or a profile with int8 = true)")
    # onnx and torch (export_bundle imports it once the output is accepted) only after the settings
    require("onnx", "export", "edgeseg export")
    from edgeseg.export.pipeline import export_bundle

    result = export_bundle(checkpoint, out, settings, calib=calib, verify_data=verify_data, force=overwrite,
                           cache_dir=cache_dir or _cache_default(), intensity=intensity, progress=not quiet,
                           echo=click.echo)
    for note in result["notes"]:
        click.echo(note)
    files = ", ".join(a.file for a in result["manifest"].artifacts)
    click.echo(f"bundle {result['bundle']}: {files}; all artifacts passed the parity gate")
    if triton_repo:
        from edgeseg.export.triton import write_triton_repo

        for folder in write_triton_repo(result["bundle"], triton_repo, max_batch=settings.max_batch, force=overwrite):
            click.echo(f"triton model {folder}")
