"""``edgeseg inspect``: a bundle's manifest and parity report as readable tables, or what a
training checkpoint holds."""

from __future__ import annotations

import json
from pathlib import Path

import click

# A record of another shape than edgeseg writes could make a line or the session list endless.
MAX_LINE = 4000
MAX_SESSIONS = 100
# Far deeper than anything edgeseg writes; shallower than Python's recursion limit.
MAX_DEPTH = 200
#: The version of what ``inspect --json`` writes (docs/export.md, "Inspecting as JSON").
JSON_SCHEMA = 1


def describe_bundle(bundle: str) -> tuple[str, list[str]]:
    """The text ``edgeseg inspect`` prints for a bundle and the checks that failed (empty when
    none), each as the phrase the error line gives (:func:`bundle_record`)."""
    record = bundle_record(bundle)
    return bundle_text(record), [f["message"] for f in record["failed"]]


def bundle_record(bundle: str) -> dict:
    """What ``inspect --json`` writes for a bundle, and all its text is made from
    (:func:`edgeseg.export.bundle_summary.summarize_bundle`)."""
    from edgeseg.export.bundle_summary import summarize_bundle

    return {"schema": JSON_SCHEMA, "kind": "bundle", **plain(summarize_bundle(bundle))}


def bundle_text(record: dict) -> str:
    """The text of a bundle's record: model, spec, tensors, artifacts with their hash checks,
    calibration record, parity table and notes."""
    from edgeseg.export.verify import parity_table
    from edgeseg.report.output import format_table

    labels = record["labels"]
    lines = [f"bundle {record['path']}  (schema {record['bundle_schema']}, edgeseg {record['edgeseg_version']}, "
             f"created {record['created']})",
             f"source   {json.dumps({k: v for k, v in record['source'].items() if k not in ('training', 'export')})}",
             *provenance_lines(record["source"]),
             f"model    {json.dumps(record['model'])}",
             f"spec     {json.dumps(record['spec'], sort_keys=True, separators=(',', ':'))}  (hash {record['spec_hash']})",
             f"labels   {', '.join(f'{k}={v}' for k, v in labels.items())}",
             f"post     {json.dumps(record['postprocess'])}   max batch {record['max_batch']}",
             fov_line(record["training_fov"])]
    for kind in ("input", "output"):
        lines += [f"{kind:<8} {t['name']} {t['shape']} {t['dtype']}" for t in record[kind + "s"]]
    rows = [{"artifact": a["key"], "file": a["file"], "bytes": a["bytes"], "sha256": a["sha256"][:12],
             "hash check": "ok" if a["hash_problem"] is None else "FAILED: " + a["hash_problem"],
             "fingerprint": ", ".join(f"{k}={v}" for k, v in (a["fingerprint"] or {}).items()) or "-",
             "auto skips": "; ".join(f"{name} ({why})" for name, why in a["auto_skips"].items()) or "-"}
            for a in record["artifacts"]]
    lines += ["", format_table(rows, ["artifact", "file", "bytes", "sha256", "hash check", "fingerprint",
                                      "auto skips"])]
    c = record["calibration"]
    if c:
        by_class = "".join(f", {labels.get(str(k), k)} {n}" for k, n in (c.get("with_class") or {}).items())
        # Bundles from before the INT8 schemes hold TensorRT's signed form and record no scheme.
        scheme = c.get("scheme") or "tensorrt (recorded before schemes)"
        lines += ["", f"INT8 calibration: {c.get('method')}, {scheme} scheme, {c.get('slices')} slices ({c.get('with_target')} with target{by_class}, "
                      f"{c.get('without_target')} without), data {str(c.get('data_hash'))[:12]}, spec {c.get('spec_hash')}"]
    if record["parity"] is not None:
        report = record["parity"]["report"]
        others = sorted({str(r.get("reference") or report.get("reference")) for r in report["results"]}
                        - {str(report.get("reference"))})
        against = f"; rows against {', '.join(others)} say so under 'against'" if others else ""
        lines += ["", f"parity vs {report.get('reference')} on {report.get('slices')} slices of {report.get('data')} "
                      f"(gate {record['parity']['gate']}{against}):", parity_table(report)]
    lines += [f"note: {note}" for note in record["notes"]]
    return "\n".join(lines)


def provenance_lines(source: dict) -> list[str]:
    """How the bundle was made, for a reader: the training's seed and data hashes, each training
    session's software, settings and command, and the export's. Records of another shape than
    edgeseg writes are shown as far as they go, never a traceback."""
    def software(env: dict) -> str:
        git = env.get("git_commit")
        git = str(git) if git else None  # a string as edgeseg writes it; anything else shown, not sliced
        edgeseg = f"edgeseg {env.get('edgeseg')}" + (f" (git {git[:12]}{', modified' if env.get('git_dirty') else ''})"
                                                     if git else "")
        libraries = ", ".join(f"{name} {version}" for name, version in _mapping(env.get("libraries")).items())
        return f"{edgeseg}, python {env.get('python')}, {libraries}; on {env.get('machine')} at {env.get('at')}"

    lines = []
    training = source.get("training")
    if isinstance(training, dict):
        data = _mapping(training.get("data"))
        split = ", ".join(f"{part} {str(h)[:12]}" for part, h in _mapping(data.get("split_sha256")).items())
        lines.append(f"trained  seed {training.get('seed')} on {data.get('source')} (data sha256 "
                     f"{str(data.get('sha256'))[:12]}; split {split})")
        sessions = training.get("sessions")
        sessions = [env for env in sessions if isinstance(env, dict)] if isinstance(sessions, list) else []
        for k, env in enumerate(sessions[:MAX_SESSIONS], start=1):
            deterministic = ", deterministic" if _mapping(env.get("determinism")).get("algorithms") is True else ""
            lines += [f"  session {k} from epoch {env.get('from_epoch')}: {env.get('threads')} thread(s), amp "
                      f"{env.get('amp')}, {env.get('memory_format')}, {env.get('processes')} process(es)"
                      f"{deterministic}; {software(env)}",
                      f"    $ {env.get('command')}"]
        if len(sessions) > MAX_SESSIONS:
            lines.append(f"  ... and {len(sessions) - MAX_SESSIONS} more sessions")
    export = source.get("export")
    if isinstance(export, dict):
        lines += [f"exported {software(export)}", f"    $ {export.get('command')}"]
    return lines


def describe_checkpoint(path: str) -> str:
    """The text ``edgeseg inspect CHECKPOINT`` prints (:func:`checkpoint_record`)."""
    return checkpoint_text(checkpoint_record(path))


def checkpoint_record(path: str) -> dict:
    """What ``inspect --json`` writes for a checkpoint, and all its text is made from: the file
    (size, sha256), model and its size, spec, classes, recipe, epochs and best epoch, what
    --resume continues from, and the provenance
    (:func:`edgeseg.models.checkpoint_summary.summarize_checkpoint`)."""
    from edgeseg.errors import require
    from edgeseg.runtime.manifest import sha256_file

    require("torch", "train", "edgeseg inspect CHECKPOINT")
    from edgeseg.models.checkpoint_summary import summarize_checkpoint

    info = summarize_checkpoint(path)
    info = {**{k: info[k] for k in ("path", "bytes")}, "sha256": sha256_file(path), **info}
    return {"schema": JSON_SCHEMA, "kind": "checkpoint", **plain(info)}


def checkpoint_text(info: dict) -> str:
    """The text of a checkpoint's record, one line for each of its parts."""
    names = info["class_names"]
    sources = "; source label values " + ", ".join(f"{name}={'+'.join(map(str, values))}" for name, values
                                                   in info["label_values"].items()) if info["label_values"] else ""
    recipe = info["recipe"]
    best = info["best"] or {}
    dice = f"{best['val_dice']:.4f}" if best.get("val_dice") is not None else "?"
    lines = [f"checkpoint {info['path']}  (format {info['format_version']}, edgeseg {info['edgeseg_version']}, "
             f"{info['bytes']} bytes, sha256 {info['sha256'][:12]})",
             f"model    {json.dumps(info['model'])}  ({info['parameters']} parameters, "
             f"{info['weight_bytes'] / 2**20:.2f} MiB of weights)",
             f"spec     {json.dumps(info['spec'])}  (hash {info['spec_hash']})",
             f"labels   {', '.join(f'{k}={name}' for k, name in enumerate(names))}{sources}",
             f"recipe   {recipe['name']} version {recipe['version']} (sha256 {str(recipe['sha256'])[:12]})"
             if recipe else "recipe   none (command-line settings)",
             f"epoch    {info['epoch']} of {info['epochs']}; best val Dice {dice} at epoch {best.get('epoch')}; "
             f"split {', '.join(f'{part} {n}' for part, n in info['split'].items()) or '-'} cases"
             f"{'; deterministic' if info['deterministic'] else ''}"]
    if info["postprocess"] is not None:
        lines.append(f"post     {json.dumps(info['postprocess'])}")
    lines.append(fov_line(info["training_fov"]))
    lines.append(_resume_line(info["resume"]))
    if isinstance(info["provenance"], dict):
        lines += provenance_lines({"training": info["provenance"]})
    return "\n".join(line if len(line) <= MAX_LINE else line[:MAX_LINE] + " ..." for line in lines)


def plain(value, depth: int = 0):
    """``value`` as JSON holds it, so that the text made from a record is the text made from its
    JSON read back: string keys, lists for tuples, and the text of anything else a checkpoint may
    carry. DataError past MAX_DEPTH levels."""
    from edgeseg.errors import DataError

    if depth > MAX_DEPTH:
        raise DataError(f"a record nested more than {MAX_DEPTH} levels deep cannot be shown")
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)


def json_text(record: dict) -> str:
    """A record as ``inspect --json`` writes it: strict JSON, so a number that is not finite (the
    logit difference of an artifact that overflowed) is null, where the text shows inf."""
    import math

    def finite(value):
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return json.dumps(finite(record), indent=1, allow_nan=False) + "\n"


def fov_line(value: dict | None) -> str:
    """The ``fov`` line: the training cases' field of view and pixel spacing, or that none is recorded
    (written before the record, or trained on slices without spacing)."""
    from edgeseg.data.field_of_view import parse_training_fov

    fov = parse_training_fov(value)
    return f"fov      {fov.describe() if fov else 'not recorded (no field-of-view check at prediction)'}"


def _resume_line(state: dict | None) -> str:
    if state is None:
        return "resume   no optimiser state: the weights to export and evaluate (--resume reads last.pt)"
    parts = ["optimiser state"]
    if state["ema_updates"] is not None:
        parts.append(f"EMA after {state['ema_updates']} updates")
    if state["loss_scale"] is not None:
        parts.append(f"fp16 loss scale {state['loss_scale']:g} ({state['loss_scale_clean_steps']} clean steps)")
    if state["memory_format"]:
        parts.append(f"memory format {state['memory_format']}")
    return f"resume   {', '.join(parts)}"


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


@click.command("inspect")
@click.argument("target", metavar="BUNDLE|CHECKPOINT", type=click.Path())
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Also write what is printed as JSON (docs/export.md, \"Inspecting as JSON\").")
def command(target: str, json_out: str | None) -> None:
    """Print a bundle folder's manifest, artifact hash checks and parity report (exit 2 when a
    check fails), or what a checkpoint file (best.pt, last.pt) holds: model, spec, labels, recipe,
    epochs, resume state and provenance."""
    from edgeseg.errors import BundleError, EdgesegError

    path = Path(target)
    if path.is_file():
        _check_json_out(json_out, target)
        record = checkpoint_record(target)
        text = checkpoint_text(record)
    else:
        if not path.exists():
            raise EdgesegError(f"{target} does not exist: inspect reads a bundle folder or a checkpoint file (.pt)")
        runs = [name for name in ("best.pt", "last.pt") if (path / name).is_file()]
        if runs and not (path / "manifest.json").exists():
            raise EdgesegError(f"{target} is a training run, not a bundle; inspect its checkpoints: "
                               f"{' or '.join(str(path / name) for name in runs)}")
        _check_json_out(json_out, target)
        record = bundle_record(target)
        text = bundle_text(record)
    if json_out:  # written whether or not a check failed: it says which did
        from edgeseg.atomic import atomic_write_text

        atomic_write_text(json_out, json_text(record))
    click.echo(text)
    failed = [f["message"] for f in record.get("failed", ())]
    if failed:
        raise BundleError(f"bundle {target} failed {len(failed)} check(s): {'; '.join(failed)}")


def _check_json_out(json_out: str | None, target: str) -> None:
    """DataError, before anything is read, for a --json that cannot be written or that would be
    written into the bundle inspected or over the checkpoint inspected."""
    from edgeseg.atomic import check_output_file, within
    from edgeseg.errors import DataError

    if not json_out:
        return
    check_output_file(json_out, "--json")
    where = Path(json_out).parent.resolve() / Path(json_out).name  # the file is renamed into place: its folder counts
    if Path(target).is_dir() and within(where, target):
        raise DataError(f"--json {json_out} is inside the bundle {target}; write it outside the bundle")
    if Path(target).is_file() and where in (Path(target).parent.resolve() / Path(target).name, Path(target).resolve()):
        raise DataError(f"--json {json_out} is the checkpoint {target} inspected; name another file")
