"""``edgeseg sweep``: train, export and measure a grid of architectures; a Dice-latency front."""

from __future__ import annotations

import json

import click

from edgeseg.cli.input_limits import input_limit_options
from edgeseg.cli.quiet_option import quiet_option
from edgeseg.errors import DataError


@click.command("sweep")
@input_limit_options
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--out", default="runs/sweep", show_default=True, type=click.Path(file_okay=False),
              help="Sweep folder; running again with the same sweep file continues it.")
@click.option("--point", "points_only", multiple=True, metavar="ID",
              help="Run only this point (repeatable, run in the order given; e.g. the long reference on the fastest machine); "
                   "the reports still list every finished point.")
@click.option("--remeasure", "rounds", type=click.IntRange(min=1), default=None, metavar="ROUNDS",
              help="Train nothing: measure the latency of the finished points again, ROUNDS passes over "
                   "them in turn, each keeping its median round (for the final table, on a quiet machine).")
@click.option("--regate", is_flag=True,
              help="Train nothing: export again the finished points whose bundle passed an older parity gate, "
                   "then measure their Dice and latency again (the reports compare only runs of one gate).")
@click.option("--rescore", is_flag=True,
              help="Train and export nothing: score the finished points' INT8 validation Dice again on every runner "
                   "here that may run it; the deployed Dice becomes that of the runner auto picked.")
@click.option("--status", is_flag=True,
              help="Train nothing: say where each point stands (finished, running in another process, stopped "
                   "part-way, not started), its epochs, best validation Dice so far and recent time per epoch.")
@quiet_option
def command(sweep_file, out, points_only, rounds, regate, rescore, status, quiet) -> None:
    """Run SWEEP_FILE (TOML: [recipe], [grid], [export], [measure]): train each point resumably,
    export it to INT8 through the parity gate, measure validation Dice (FP32, INT8) and the auto
    backend's end-to-end latency; write sweep.csv, results.json, pareto.png and commands.sh.

    Several processes may run the same SWEEP_FILE and --out at once (e.g. one per GPU with
    CUDA_VISIBLE_DEVICES): each claims the points no other process holds."""
    from edgeseg.sweep.config import load_sweep
    from edgeseg.sweep.report import (NOT_AUTOS, comparable_scorings, int8_scoring, int8_scorings, latency_machines,
                                      no_choice_reason, one_machine, pareto_front, result_gates, variant_rows,
                                      write_reports)
    from edgeseg.sweep.redo import regate as regate_points, remeasure, rescore as rescore_points
    from edgeseg.sweep.run import check_sweep_folder, existing_sweep_folder, run_sweep
    from edgeseg.sweep.versions import differing_versions, versions_text

    sweep = load_sweep(sweep_file)
    if sum((status, regate, rescore, rounds is not None)) > 1:
        raise DataError("--status, --regate, --rescore and --remeasure do not go together: give one")
    # torch (a second or more to import) only where a point is trained, exported or scored, once
    # the sweep file, flags and folder are accepted: a report over finished points never needs it
    if status or regate or rescore or rounds is not None:
        existing_sweep_folder(sweep, out)
    else:
        check_sweep_folder(sweep, out)
    if status:
        _print_status(sweep, out, points_only)
        return
    if regate:
        points, redone = regate_points(sweep, out, only=points_only)
        click.echo(f"exported again through today's gate: {', '.join(redone)}" if redone else
                   "every finished point passed today's gate already; nothing exported again")
        elsewhere = []
    elif rescore:
        points, redone = rescore_points(sweep, out, only=points_only)
        click.echo(f"scored again on every INT8 runner here: {', '.join(redone)}" if redone else
                   "no finished point was scored again (none has an INT8 graph that can be scored here)")
        elsewhere = []
    elif rounds is None:
        points, elsewhere = run_sweep(sweep, out, progress=not quiet, only=points_only)
    else:
        points, elsewhere = remeasure(sweep, out, rounds, only=points_only), []
    if not points:
        click.echo("no point is finished yet" + (f"; {', '.join(elsewhere)} running in another process" if elsewhere else ""))
        return
    paths = write_reports(out, points, sweep.choose)
    variants = variant_rows(points)
    front = pareto_front(variants)
    for r in points:
        click.echo(f"{r['id']:<38} {r['params'] / 1e6:6.2f} M  {r['gflop']:7.2f} GFLOP  Dice fp32 {r['dice_fp32']:.4f}  "
                   f"int8 {_int8_text(r)}{_other_runners(r)}  {r['backend']:<16} {r['latency_ms_p50']:8.2f} ms  "
                   f"{r['volume_slices_per_s']:7.1f} slices/s{'  *front' if r.get('variant', r['id']) in front else ''}")
    if any(v["runs"] > 1 for v in variants):
        click.echo("variants (mean over their runs; sd and range of the deployed Dice):")
        for v in variants:
            sd = "" if v["dice_deployed_sd"] is None else f" sd {v['dice_deployed_sd']:.4f}"
            click.echo(f"{v['id']:<38} {v['runs']} run(s)  Dice fp32 {v['dice_fp32']:.4f}  deployed {v['dice_deployed']:.4f}{sd} "
                       f"({v['dice_deployed_min']:.4f}-{v['dice_deployed_max']:.4f})  {v['latency_ms_p50']:8.2f} ms"
                       + (f"  INT8 refused in {v['int8_refused_runs']}" if v["int8_refused_runs"] else "")
                       + ("  *front" if v["id"] in front else ""))
    if "choice" in paths:
        c = json.loads(paths["choice"].read_text())
        click.echo(f"chosen: {c['chosen']} (fastest within {c['max_dice_loss']:g} mean Dice of {c['reference']}, "
                   f"{c['runs']} and {c['reference_runs']} run(s)): "
                   f"Dice {c['dice']:.4f} vs {c['reference_dice']:.4f}, {c['speedup_end_to_end']:.2f}x faster end to end, "
                   f"{c['speedup_model']:.2f}x model alone, {c['gflop_ratio']:.2f}x fewer GFLOP"
                   + ("" if len(points) == len(sweep.points) else
                      f" (over the {len(points)} of {len(sweep.points)} points finished so far)"))
        if c.get("faster_missed"):
            m = c["faster_missed"][0]
            click.echo(f"closest faster miss: {m['id']}, {m['speedup_end_to_end']:.2f}x faster end to end, mean Dice "
                       f"{m['dice_difference']:+.4f} deployed / {m['dice_fp32_difference']:+.4f} FP32 against "
                       f"{c['reference']} (margin {c['max_dice_loss']:g})" + _paired_text(m.get("paired")))
        if c.get("paired"):
            click.echo(f"chosen against {c['reference']}:{_paired_text(c['paired'])[1:]}")
        if c.get("mixed_versions"):
            click.echo(f"note: chosen over latencies measured with different library versions "
                       f"({versions_text(c['mixed_versions'])}), as [choose] accept_mixed_versions allows")
    elif sweep.choose and len(gates := result_gates(points)) > 1:
        counts = ", ".join(f"{g} on {sum(p.get('gate', 'v1') == g for p in points)}" for g in gates)
        click.echo(f"no choice: the runs' bundles passed different parity gates ({counts}); "
                   "run this command with --regate to export the older ones again")
    elif sweep.choose and not comparable_scorings(points):
        counts = ", ".join(f"{kind} on {n}" for kind, n in int8_scorings(points).items())
        # a runner auto picked that could not be scored where --rescore ran: it is needed there
        unscored = sorted({p["backend"] for p in points if int8_scoring(p) == NOT_AUTOS})
        where = f" on a machine where {', '.join(unscored)} can run" if unscored else " to score them on every runner here"
        click.echo(f"no choice: the runs' INT8 Dice was not all scored alike ({counts}); "
                   f"run this command with --rescore{where}")
    elif sweep.choose and not one_machine(machines := latency_machines(points)):
        click.echo(f"no choice: the latencies were not all measured on one recorded machine ({'; '.join(machines)}); "
                   "run this command with --remeasure N on one machine")
    elif sweep.choose and (mixed := differing_versions(points)) and not sweep.choose.get("accept_mixed_versions"):
        click.echo(f"no choice: the latencies were measured with different library versions ({versions_text(mixed)}); "
                   "run this command with --remeasure N to measure every point with the versions here, or set "
                   "[choose] accept_mixed_versions = true to choose anyway")
    elif sweep.choose:
        click.echo(f"no choice yet: {no_choice_reason(variants, sweep.choose)}")
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")
    if elsewhere:
        click.echo(f"not in these reports yet: {', '.join(elsewhere)}, running in another process; "
                   "run this command again when it has finished to report every point")


def _int8_text(r) -> str:
    """The deployed INT8 Dice, or why there is none: the gate refused the graph, or no runner scored it."""
    if r["dice_int8"] is not None:
        return format(r["dice_int8"], ".4f")
    return "refused" if r.get("int8_refused", True) else "not scored"


def _other_runners(r) -> str:
    """' (onnxruntime:int8 0.9024)': the INT8 Dice on the runners other than the deployed one."""
    others = {k: v for k, v in (r.get("dice_int8_runners") or {}).items() if k != r.get("dice_int8_backend")}
    return f" ({', '.join(f'{k} {v:.4f}' for k, v in others.items())})" if others else ""


def _paired_text(paired) -> str:
    """'; paired over N seeds: ...' for a faster miss or the choice (report.paired_gap), else ''."""
    if not paired:
        return ""
    text = f"; paired over {paired['seeds']} seed(s): mean gap {paired['gap_mean']:+.4f}"
    if paired["gap_ci95"]:
        text += f", 95% interval [{paired['gap_ci95'][0]:+.4f}, {paired['gap_ci95'][1]:+.4f}]"
    if "case_pairs" in paired:
        text += f"; over {paired['case_pairs']} case pairs median {paired['case_gap_median']:+.4f}"
        if paired["case_wilcoxon_p"] is not None:
            text += f" (Wilcoxon p {paired['case_wilcoxon_p']:.3f}, cases taken as independent)"
    return text


def _print_status(sweep, out, only) -> None:
    from edgeseg.sweep.run import sweep_status

    for row in sweep_status(sweep, out, only):
        line = f"{row['id']:<38} {row['state']:<12} epoch {row['epoch']:>4}/{row['epochs']}"
        if "best_val_dice" in row:
            line += f"  best val Dice {row['best_val_dice']:.4f}"
        if row["state"] == "finished":
            r = row["result"]
            line += f"  Dice fp32 {r['dice_fp32']:.4f}  {r['backend']} {r['latency_ms_p50']:.2f} ms"
        elif "seconds_per_epoch" in row:
            left = (row["epochs"] - row["epoch"]) * row["seconds_per_epoch"] / 3600
            line += f"  {row['seconds_per_epoch']:.0f} s/epoch lately, about {left:.1f} h of training left at that pace"
        click.echo(line)
