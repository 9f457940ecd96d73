"""``edgeseg bench``: per-stage latency, throughput and cold start of a bundle's backends."""

from __future__ import annotations

import click

from edgeseg.cli.finite_range import FiniteFloatRange
from edgeseg.cli.input_limits import input_limit_options
from edgeseg.cli.quiet_option import quiet_option
from edgeseg.cli.renamed_option import RenamedOption
from edgeseg.cli.tta_option import tta_option
from edgeseg.progress import progress_bar

# Timed (or warm-up) calls per stage: more is a typing error, and would run for days.
MAX_CALLS = 100_000
# Seconds of --duration, per backend and batch size: an hour each is already a long run.
MAX_DURATION_S = 3600


@click.command("bench")
@input_limit_options
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--backend", "backends", multiple=True, default=["all"], show_default=True,
              help="'all' (auto plus every installed backend and precision), or names such as openvino:int8; repeatable.")
@click.option("--batch", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--size", default=512, show_default=True, help="Input slice size (rows = cols) in pixels.")
@click.option("--runs", default=30, show_default=True, metavar="CALLS", help="Timed calls per stage after warm-up.")
@click.option("--duration", default=None, type=float, metavar="SECONDS",
              help=f"Instead of --runs: time each batch size (and the volume) for at least SECONDS "
                   f"(at most {MAX_CALLS} calls per stage).")
@click.option("--warmup", default=5, show_default=True, metavar="CALLS", help="Untimed calls before timing.")
@click.option("--threads", default=0, show_default=True, help="CPU threads for the backends (0: their default).")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option("--png", "png_out", default=None, type=click.Path(dir_okay=False), help="Write a latency plot PNG.")
@click.option("--no-cold-start", is_flag=True, help="Skip the fresh-process cold-start measurement.")
@tta_option
@quiet_option
def command(bundle, backends, batch, size, runs, warmup, duration, threads, json_out, png_out, no_cold_start,
            tta, quiet) -> None:
    """Benchmark BUNDLE on this machine: one table for all backends, measured in one run."""
    from edgeseg.atomic import check_output_file
    from edgeseg.atomic_set import atomic_set
    from edgeseg.bench.runtime import (backend_labels, bench_backend, cold_start, format_table, input_shape,
                                       plot_latency, write_json)
    from edgeseg.errors import DataError, EdgesegError, require
    from edgeseg.limits import check_volume
    from edgeseg.runtime.manifest import read_manifest, verify_artifacts
    from edgeseg.runtime.runners.base import MAX_THREADS

    try:
        batches = tuple(sorted({int(b) for b in batch.split(",")}))
    except ValueError:
        raise DataError(f"--batch must be comma-separated integers, got {batch!r}") from None
    if not batches or min(batches) < 1 or size < 8 or not 1 <= runs <= MAX_CALLS or not 0 <= warmup <= MAX_CALLS:
        raise DataError(f"need batch sizes >= 1, --size >= 8, --runs 1..{MAX_CALLS}, --warmup 0..{MAX_CALLS}; "
                        f"got {batch!r}, {size}, {runs}, {warmup}")
    _check_duration(duration)
    if not 0 <= threads <= MAX_THREADS:  # before the bundle is hashed and any table printed
        raise DataError(f"--threads must be >= 0 (0: the backends' default) and at most {MAX_THREADS}, got {threads}")
    outputs = [(path, what) for path, what in ((json_out, "--json"), (png_out, "--png")) if path]
    for path, what in outputs:
        check_output_file(path, what)
    _check_outputs_apart(bundle, outputs)
    if png_out:  # before anything is measured, not after minutes of it
        require("matplotlib", "train", "edgeseg bench --png")
    manifest = read_manifest(bundle)
    verify_artifacts(bundle, manifest)
    labels = backend_labels(bundle, list(backends))  # an unknown or absent backend: refused before any table
    check_volume(input_shape(batches, manifest.max_batch, size), f"--size {size}")
    above = [b for b in batches if b > manifest.max_batch]
    if above:
        source = click.get_current_context().get_parameter_source("batch")
        if source != click.core.ParameterSource.DEFAULT:  # asked for: measuring another batch would answer another question
            raise DataError(f"--batch {above[0]} is above the bundle's max batch {manifest.max_batch}")
        click.echo(f"batch {', '.join(map(str, above))}: above the bundle's max batch {manifest.max_batch}, not measured")
    results = []
    for label in progress_bar(labels, desc="benchmarking", unit="backend", shown=not quiet):
        try:
            result = bench_backend(bundle, label, batches=batches, size=size, runs=MAX_CALLS if duration else runs,
                                   warmup=warmup, threads=threads, tta=tta, duration=duration)
        except EdgesegError as exc:
            results.append({"backend": label, "error": str(exc)})
            continue
        if not no_cold_start:
            result["cold_start"] = cold_start(bundle, label, size=size, threads=threads, tta=tta)
        results.append(result)
    click.echo(format_table(results))
    failed = [r for r in results if "error" in r]
    if failed and len(failed) == len(results):  # a table of errors only: nothing measured, nothing to keep
        raise DataError(f"every measurement failed (first: {failed[0]['backend']}: {failed[0]['error']})")
    # both files land together after both are written (atomic_set): a stop or a full disk while
    # the plot is drawn, or a Ctrl-C between the renames, must not leave this run's JSON beside
    # an earlier run's plot
    with atomic_set([path for path in (json_out, png_out) if path]) as staged:
        if json_out:
            write_json(results, staged[json_out])
        if png_out:
            plot_latency(results, staged[png_out])


def _check_duration(duration: float | None) -> None:
    """DataError for a --duration beside an explicit --runs (one would be ignored), or one that
    is not a number of seconds above 0 and at most MAX_DURATION_S."""
    import math

    from edgeseg.errors import DataError

    if duration is None:
        return
    if click.get_current_context().get_parameter_source("runs") != click.core.ParameterSource.DEFAULT:
        raise DataError("--runs and --duration do not go together: give one")
    if not (math.isfinite(duration) and 0 < duration <= MAX_DURATION_S):
        raise DataError(f"--duration must be seconds above 0 and at most {MAX_DURATION_S}, got {duration:g}")


def _check_outputs_apart(bundle, outputs: list[tuple[str, str]]) -> None:
    """DataError for a --json/--png inside the bundle measured (it would overwrite a file the
    run reads, or add one to the bundle) or two of them naming one file (one would be lost)."""
    from pathlib import Path

    from edgeseg.atomic import within
    from edgeseg.errors import DataError

    seen = {}
    for path, what in outputs:
        where = Path(path).parent.resolve() / Path(path).name  # the file is renamed into place: its folder counts
        if within(where, bundle):
            raise DataError(f"{what} {path} is inside the bundle {bundle}; write it outside the bundle")
        if where in seen:
            raise DataError(f"{what} {path} is the file {seen[where]} writes too; name another file")
        seen[where] = what


@click.command("bench-serve")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--clients", default=16, show_default=True, type=click.IntRange(1, 1024), help="Concurrent clients.")
@click.option("--duration", "--seconds", "seconds", cls=RenamedOption, old=("--seconds",), default=60.0,
              show_default=True, type=FiniteFloatRange(0.5), metavar="SECONDS", help="Seconds of measured load.")
@click.option("--warmup", default=5.0, show_default=True, type=FiniteFloatRange(0), metavar="SECONDS",
              help="Seconds of untimed load first (bench's --warmup counts calls; here it is time).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 1024), help="Slices per request.")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1, 1024), help="Server --max-batch.")
@click.option("--backend", default="auto", show_default=True, help="Server --backend.")
@click.option("--threads", default=0, show_default=True, help="Server --threads.")
@click.option("--model-name", "--model", "model", cls=RenamedOption, old=("--model",), default="edgeseg",
              show_default=True, help="NAME (the network, pre-processed tensors) or NAME-pipeline (INT16 HU slices of --size).")
@click.option("--size", default=512, show_default=True, type=click.IntRange(8, 4096),
              help="Side of the HU slices sent to NAME-pipeline, in pixels.")
@click.option("--triton", is_flag=True,
              help="Load a real tritonserver (nvidia-pytriton) over the bundle's KIND_CPU repository instead.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the results as JSON.")
def serve_command(bundle, clients, seconds, warmup, batch, max_batch, backend, threads, model, size, triton,
                  json_out) -> None:
    """Load-test `edgeseg serve` (or Triton) on loopback: errors, p50/p99 latency, throughput, server RSS growth."""
    import json

    from edgeseg.atomic import atomic_write_text, check_output_file
    from edgeseg.bench.serve_load import check_load_batch, load_test
    from edgeseg.errors import DataError
    from edgeseg.export.triton import check_model_name
    from edgeseg.runtime.manifest import read_manifest

    if json_out:
        check_output_file(json_out, "--json")
    check_model_name(model)
    check_load_batch(read_manifest(bundle), batch, max_batch)
    server = "tritonserver" if triton else "edgeseg serve"
    click.echo(f"starting {server} and loading {model} with {clients} clients for {seconds:g} s ...")
    r = load_test(bundle, clients=clients, seconds=seconds, warmup=warmup, batch=batch, max_batch=max_batch,
                  backend=backend, threads=threads, model=model, size=size, triton=triton)
    click.echo(f"{r['model']}: requests {r['requests']}  errors {r['errors']}  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
               f"{r['requests_per_s']} req/s ({r['slices_per_s']} slices/s)  server RSS {r['rss_start_mb']} -> "
               f"{r['rss_end_mb']} MB ({r['rss_growth']:+.1%}), {r['backend']}")
    for line in r["first_errors"]:
        click.echo(f"  error: {line}")
    if json_out:
        atomic_write_text(json_out, json.dumps(r, indent=2) + "\n")
    if r["errors"]:  # the figures above are of a server that failed requests: not a result to keep
        raise DataError(f"{r['errors']} request(s) failed during the load test (first: {r['first_errors'][0]})")
