"""``edgeseg inspect``: a bundle's manifest and parity report as readable tables."""

from __future__ import annotations

import json
from pathlib import Path

import click


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
    session's software, settings and command, and the export's."""
    def software(env: dict) -> str:
        git = env.get("git_commit")
        edgeseg = f"edgeseg {env.get('edgeseg')}" + (f" (git {git[:12]}{', modified' if env.get('git_dirty') else ''})"
                                                     if git else "")
        libraries = ", ".join(f"{name} {version}" for name, version in (env.get("libraries") or {}).items())
        return f"{edgeseg}, python {env.get('python')}, {libraries}; on {env.get('machine')} at {env.get('at')}"

    lines = []
    training = source.get("training")
    if isinstance(training, dict):
        data = training.get("data") or {}
        split = ", ".join(f"{part} {str(h)[:12]}" for part, h in (data.get("split_sha256") or {}).items())
        lines.append(f"trained  seed {training.get('seed')} on {data.get('source')} (data sha256 "
                     f"{str(data.get('sha256'))[:12]}; split {split})")
        for k, env in enumerate(training.get("sessions") or [], start=1):
            lines += [f"  session {k} from epoch {env.get('from_epoch')}: {env.get('threads')} thread(s), amp "
                      f"{env.get('amp')}, {env.get('memory_format')}, {env.get('processes')} process(es); {software(env)}",
                      f"    $ {env.get('command')}"]
    export = source.get("export")
    if isinstance(export, dict):
        lines += [f"exported {software(export)}", f"    $ {export.get('command')}"]
    return lines


@click.command("inspect")
@click.argument("bundle", type=click.Path())
def command(bundle: str) -> None:
    """Print BUNDLE's manifest, artifact hash checks and parity report; exit 2 when a check fails."""
    from edgeseg.errors import BundleError

    text, failed = describe_bundle(bundle)
    click.echo(text)
    if failed:
        raise BundleError(f"bundle {bundle} failed {len(failed)} check(s): {'; '.join(failed)}")
