"""``edgeseg inspect``: a bundle's manifest and parity report as readable tables, or what a
training checkpoint holds."""

from __future__ import annotations

import json
from pathlib import Path

import click

# A record of another shape than edgeseg writes could make a line or the session list endless.
MAX_LINE = 4000
MAX_SESSIONS = 100


def describe_bundle(bundle: str) -> tuple[str, list[str]]:
    """The text ``edgeseg inspect`` prints: model, spec, tensors, artifacts (with a fresh hash
    check), calibration record and parity table; and the checks that failed (empty when none):
    besides the hashes, that parity.json is this bundle's and its verdicts follow from its numbers
    (:mod:`edgeseg.export.audit`), and that the manifest's spec and labels are those the artifacts
    embed (:mod:`edgeseg.export.embedded`)."""
    from edgeseg.errors import BundleError
    from edgeseg.export.audit import parity_checks
    from edgeseg.export.embedded import embedded_checks
    from edgeseg.report.output import format_table
    from edgeseg.export.verify import gate_label, parity_table
    from edgeseg.runtime.manifest import PARITY_NAME, read_bundle_json_bytes, read_manifest, verify_artifacts
    from edgeseg.runtime.runners import runners_for
    from edgeseg.runtime.selection import skip_reasons

    manifest = read_manifest(bundle)
    lines = [f"bundle {bundle}  (schema {manifest.schema}, edgeseg {manifest.edgeseg_version}, created {manifest.created})",
             f"source   {json.dumps({k: v for k, v in manifest.source.items() if k not in ('training', 'export')})}",
             *provenance_lines(manifest.source),
             f"model    {json.dumps(manifest.model)}",
             f"spec     {manifest.spec.to_json()}  (hash {manifest.spec.hash})",
             f"labels   {', '.join(f'{k}={v}' for k, v in sorted(manifest.labels.items()))}",
             f"post     {json.dumps(manifest.postprocess)}   max batch {manifest.max_batch}"]
    for kind, tensors in (("input", manifest.inputs), ("output", manifest.outputs)):
        lines += [f"{kind:<8} {t.name} {list(t.shape)} {t.dtype}" for t in tensors]
    rows, failed = [], []
    if not manifest.artifacts:
        failed.append("the manifest lists no artifacts")
    for entry in manifest.artifacts:
        try:
            verify_artifacts(bundle, manifest, only=[entry])
            check = "ok"
        except BundleError as exc:
            check = "FAILED: " + str(exc).split(": ", 1)[-1]
            failed.append(f"{entry.key}: {str(exc).split(': ', 1)[-1]}")
        fingerprint = ", ".join(f"{k}={v}" for k, v in (entry.fingerprint or {}).items()) or "-"
        skips = dict(entry.excluded)
        for cls in runners_for(entry.format):
            if cls.name not in skips and cls.named_only:
                skips[cls.name] = cls.named_only
            elif cls.name not in skips and skip_reasons(entry, cls.name):
                skips[cls.name] = f"on this machine: {skip_reasons(entry, cls.name)}"
        skipped = "; ".join(f"{name} ({why})" for name, why in sorted(skips.items())) or "-"
        rows.append({"artifact": entry.key, "file": entry.file, "bytes": entry.bytes, "sha256": entry.sha256[:12],
                     "hash check": check, "fingerprint": fingerprint, "auto skips": skipped})
    lines += ["", format_table(rows, ["artifact", "file", "bytes", "sha256", "hash check", "fingerprint",
                                      "auto skips"])]
    if manifest.calibration:
        c = manifest.calibration
        by_class = "".join(f", {manifest.labels.get(int(k), k)} {n}" for k, n in (c.get("with_class") or {}).items())
        # Bundles from before the INT8 schemes hold TensorRT's signed form and record no scheme.
        scheme = c.get("scheme") or "tensorrt (recorded before schemes)"
        lines += ["", f"INT8 calibration: {c.get('method')}, {scheme} scheme, {c.get('slices')} slices ({c.get('with_target')} with target{by_class}, "
                      f"{c.get('without_target')} without), data {str(c.get('data_hash'))[:12]}, spec {c.get('spec_hash')}"]
    parity_path = Path(bundle) / PARITY_NAME
    if not parity_path.is_file():  # every export writes it: without it nothing says the artifacts were checked
        failed.append(f"{PARITY_NAME} is missing: nothing records that the artifacts passed the parity gate")
    else:
        try:
            parity = json.loads(read_bundle_json_bytes(parity_path).decode("utf-8"))
            table = parity_table(parity) if isinstance(parity, dict) and "results" in parity else None
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise BundleError(f"{parity_path}: not a readable parity report ({' '.join(str(exc).split())})") from None
        if table is None:
            failed.append(f"{PARITY_NAME} holds no parity results")
        else:
            gate = gate_label(parity.get("gate_version"), parity.get("structure_px"))
            lines += ["", f"parity vs {parity.get('reference')} on {parity.get('slices')} slices of {parity.get('data')} "
                          f"(gate {gate}):", table]
            if parity.get("passed") is False:
                failed.append("the parity report records a failed gate")
            notes, problems = parity_checks(parity, manifest)
            lines += [f"note: {note}" for note in notes]
            failed += problems
    notes, problems = embedded_checks(bundle, manifest)
    lines += [f"note: {note}" for note in notes]
    failed += problems
    return "\n".join(lines), failed


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
    """The text ``edgeseg inspect CHECKPOINT`` prints: the file, model and its size, spec, classes,
    recipe, epochs and best epoch, what --resume continues from, and the provenance
    (:func:`edgeseg.models.checkpoint_summary.summarize_checkpoint`)."""
    from edgeseg.errors import require
    from edgeseg.runtime.manifest import sha256_file

    require("torch", "train", "edgeseg inspect CHECKPOINT")
    from edgeseg.models.checkpoint_summary import summarize_checkpoint

    info = summarize_checkpoint(path)
    names = info["class_names"]
    sources = "; source label values " + ", ".join(f"{name}={'+'.join(map(str, values))}" for name, values
                                                   in info["label_values"].items()) if info["label_values"] else ""
    recipe = info["recipe"]
    best = info["best"] or {}
    dice = f"{best['val_dice']:.4f}" if best.get("val_dice") is not None else "?"
    lines = [f"checkpoint {path}  (format {info['format_version']}, edgeseg {info['edgeseg_version']}, "
             f"{info['bytes']} bytes, sha256 {sha256_file(path)[:12]})",
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
        lines.append(f"post     {json.dumps(info['postprocess'], default=str)}")
    lines.append(_resume_line(info["resume"]))
    if isinstance(info["provenance"], dict):
        lines += provenance_lines({"training": info["provenance"]})
    return "\n".join(line if len(line) <= MAX_LINE else line[:MAX_LINE] + " ..." for line in lines)


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
def command(target: str) -> None:
    """Print a bundle folder's manifest, artifact hash checks and parity report (exit 2 when a
    check fails), or what a checkpoint file (best.pt, last.pt) holds: model, spec, labels, recipe,
    epochs, resume state and provenance."""
    from edgeseg.errors import BundleError, EdgesegError

    path = Path(target)
    if path.is_file():
        click.echo(describe_checkpoint(target))
        return
    if not path.exists():
        raise EdgesegError(f"{target} does not exist: inspect reads a bundle folder or a checkpoint file (.pt)")
    runs = [name for name in ("best.pt", "last.pt") if (path / name).is_file()]
    if runs and not (path / "manifest.json").exists():
        raise EdgesegError(f"{target} is a training run, not a bundle; inspect its checkpoints: "
                           f"{' or '.join(str(path / name) for name in runs)}")
    text, failed = describe_bundle(target)
    click.echo(text)
    if failed:
        raise BundleError(f"bundle {target} failed {len(failed)} check(s): {'; '.join(failed)}")
