"""``edgeseg triton``: a Triton Inference Server model repository from a bundle."""

from __future__ import annotations

import click

from edgeseg.cli.renamed_option import RenamedOption, overwrite_option
from edgeseg.cli.tta_option import tta_option


@click.command("triton")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("repo", type=click.Path())
@click.option("--model-name", "--name", "name", cls=RenamedOption, old=("--name",), default="edgeseg", show_default=True,
              help="Model name in the repository (letters, digits, '_', '.', '-'); the pipeline is NAME-pipeline.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"], case_sensitive=False), default="fp32", show_default=True,
              help="Which of the bundle's ONNX graphs Triton serves.")
@click.option("--max-batch", type=int, default=None,
              help="The network's max_batch_size, 0..the bundle's max_batch; 0 turns batching off (default: the "
                   "bundle's). The pipeline, not batched by Triton, takes at most this many slices a request.")
@click.option("--kind", type=click.Choice(["KIND_GPU", "KIND_CPU"], case_sensitive=False), default="KIND_GPU", show_default=True,
              help="KIND_GPU: ONNX Runtime / TensorRT backends; KIND_CPU: every model on the Python backend.")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Instances of each model Triton runs at once (instance_group count).")
@click.option("--backend", default="onnxruntime", show_default=True,
              help="edgeseg runtime backend of the Python-backend models (the pipeline; the network with KIND_CPU).")
@overwrite_option("Write into an existing repository: replace its models of this --model-name, keep the others.")
@tta_option
def command(bundle, repo, name, precision, max_batch, kind, instances, backend, overwrite, tta) -> None:
    """Write REPO/<name> (the network), REPO/<name>-pipeline (HU in, labels out) and, for
    TensorRT engines on KIND_GPU, REPO/<name>-trt."""
    from edgeseg.atomic import check_output_folder
    from edgeseg.export.triton import spacing_note, write_triton_repo
    from edgeseg.runtime.manifest import read_manifest

    check_output_folder(repo, "REPO", staged=True)

    models = write_triton_repo(bundle, repo, name=name, precision=precision, max_batch=max_batch, kind=kind,
                               instances=instances, backend=backend, force=overwrite, tta=tta)
    for folder in models:
        click.echo(f"wrote {folder}/config.pbtxt")
    note = spacing_note(read_manifest(bundle), name)
    if note is not None:
        click.echo(note)
