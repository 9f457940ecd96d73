"""Does a bundle's ``parity.json`` belong to its artifacts, and do its verdicts follow from its numbers?

``edgeseg inspect`` shows the parity report the export wrote; these checks keep it from showing
one that says nothing about the bundle. Each row must be for an artifact the manifest lists (same
file, format and precision; and, where the row records it, the same sha256: exports record the
sha256 of the file each row measured), every artifact must have rows, and each row's ``passed``
must be what the gate computes from the row's own drops and limit (:func:`row_verdict`, the rule of
:func:`edgeseg.export.verify.compare_logits`). A row that failed must be one the manifest excludes
from ``auto``, and every artifact must have passed on some runner (and in the half-precision check).

Reports from before rows recorded a sha256 are tied to the artifacts by file name alone; the
checks say so in a note instead of failing.
"""

from __future__ import annotations

from edgeseg.export.fp16 import HALF_EMULATION
from edgeseg.export.verify import failing_changes
from edgeseg.runtime.manifest import ArtifactEntry, Manifest

# What every parity row since the first gate records, and what its verdict is computed from.
ROW_FIELDS = ("key", "file", "precision", "run_on", "passed", "finite", "dice_drop", "limit", "changed_decided_pixels")
# compare_logits' tolerance on the limit.
LIMIT_SLACK = 1e-12


def row_name(row: dict) -> str:
    """How reports name a row: ``onnx-int8 on onnxruntime-cpu``."""
    return f"{row.get('key')} on {row.get('run_on')}"


def row_runners(rows: list[dict], file: str) -> list[str]:
    """The runners with a row for ``file`` (``runner`` of each row; the half-precision check
    has none), in the order of the rows: what the manifest records as ``scored``."""
    return list(dict.fromkeys(r["runner"] for r in rows if r.get("file") == file and r.get("runner")))


def row_verdict(row: dict) -> tuple[bool, str]:
    """Whether the gate passes ``row`` by the numbers it records, and why in words. FP32 rows pass
    with finite logits and no decided pixel changed; FP16 and INT8 rows with finite logits, their
    drop (the larger of ``dice_drop`` and every class's drop) within ``limit`` and no failing
    structure change. TypeError, ValueError or KeyError for a row holding something else than numbers."""
    if row["finite"] is not True:
        return False, "non-finite logits"
    if row["precision"] == "fp32":
        changed = int(row["changed_decided_pixels"])
        return changed == 0, f"{changed} mask pixels differ from FP32"
    drops = {"dice drop": float(row["dice_drop"])}
    drops.update({f"class {name}'s drop": float(d) for name, d in (row.get("class_drop") or {}).items() if d is not None})
    what, drop = max(drops.items(), key=lambda item: item[1])
    limit = float(row["limit"])
    ok = drop <= limit + LIMIT_SLACK
    reasons = [f"{what} {drop:.4f} {'<=' if ok else '>'} limit {limit:g}"]
    lost = failing_changes(list(row.get("structure_changes") or []))
    # gate v1 with structures (2026-12-04 to -05): every entry of lost_structures failed the row
    lost += list(row.get("lost_structures") or [])
    if lost:
        reasons.append(f"{len(lost)} structure change(s) that fail the gate")
    return ok and not lost, "; ".join(reasons)


def parity_checks(parity: dict, manifest: Manifest) -> tuple[list[str], list[str]]:
    """(notes, problems) of ``parity`` (a parsed parity.json with ``results``) against ``manifest``:
    a problem is one phrase naming the row or artifact; notes say what could not be checked."""
    rows = parity.get("results")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return [], ["parity.json: results is not a list of rows"]
    by_file = {entry.file: entry for entry in manifest.artifacts}
    thresholds = parity.get("thresholds") if isinstance(parity.get("thresholds"), dict) else {}
    problems: list[str] = []
    belonging: dict[str, list[dict]] = {}
    hashed = [r for r in rows if "sha256" in r]
    for number, row in enumerate(rows, 1):
        problem = _row_problem(row, number, by_file, thresholds, bool(hashed))
        if problem:
            problems.append(problem)
        elif row["file"] in by_file:
            belonging.setdefault(row["file"], []).append(row)
    for entry in manifest.artifacts:
        problems += _artifact_problems(entry, belonging.get(entry.file, []), rows)
    notes = [] if hashed or not rows else [
        "parity.json records no artifact sha256 (exported before its rows did): its rows are tied to the "
        "artifacts by file name only"]
    return notes, problems


def _row_problem(row: dict, number: int, by_file: dict[str, ArtifactEntry], thresholds: dict,
                 hashed: bool) -> str | None:
    """What is wrong with one row (``number``, counted from 1), or None."""
    missing = [field for field in ROW_FIELDS if field not in row]
    if missing:
        return f"parity row {number} ({row_name(row)}) lacks {', '.join(missing)}"
    name = row_name(row)
    entry = by_file.get(row["file"]) if isinstance(row["file"], str) else None
    if entry is None:
        return f"parity row {name} is for {row['file']!r}, which the manifest does not list (not this bundle's report?)"
    if (row["key"], row["precision"]) != (entry.key, entry.precision):
        return f"parity row {name} is for {row['file']} as {row['key']}, but the manifest lists {row['file']} as {entry.key}"
    if "sha256" in row and row["sha256"] != entry.sha256:
        return (f"parity row {name} measured {row['file']} with sha256 {str(row['sha256'])[:12]}..., the manifest's "
                f"{row['file']} has {entry.sha256[:12]}... (not this bundle's report?)")
    if hashed and "sha256" not in row:
        return f"parity row {name} records no sha256 of {row['file']} while other rows do"
    if not isinstance(row["passed"], bool):
        return f"parity row {name}: passed is {row['passed']!r}, not true or false"
    try:
        verdict, why = row_verdict(row)
        threshold = thresholds.get(row["precision"])
        off_threshold = threshold is not None and float(row["limit"]) != float(threshold)
    except (TypeError, ValueError, KeyError, AttributeError):
        return f"parity row {name} holds a value the gate cannot have written (not numbers where numbers belong)"
    if verdict != row["passed"]:
        return (f"parity row {name} records pass {'yes' if row['passed'] else 'NO'}, but its own numbers "
                f"{'pass' if verdict else 'fail'}: {why}")
    if off_threshold:
        return f"parity row {name}: limit {row['limit']} is not the report's {row['precision']} threshold {threshold}"
    return None


def _artifact_problems(entry: ArtifactEntry, rows: list[dict], all_rows: list[dict]) -> list[str]:
    """An artifact the gate passed has rows, passed on some runner and in the half-precision
    check, and the manifest excludes from auto every runner it failed on."""
    if not rows:
        if any(r.get("file") == entry.file for r in all_rows):
            return []  # its rows are wrong, and were named as such
        return [f"{entry.key} ({entry.file}) has no parity row: nothing records that it passed the gate"]
    problems = []
    runs = [r for r in rows if r["run_on"] != HALF_EMULATION]
    if not any(r["passed"] for r in runs):
        problems.append(f"{entry.key} ({entry.file}) passed the gate on no runner in parity.json")
    problems += [f"{row_name(r)}: the half-precision check failed" for r in rows
                 if r["run_on"] == HALF_EMULATION and not r["passed"]]
    problems += [f"{row_name(r)} failed the gate, but the manifest does not exclude {r['runner']} from auto on "
                 f"{entry.file}" for r in runs if not r["passed"] and r.get("runner") and r["runner"] not in entry.excluded]
    if entry.scored is not None:
        ran = row_runners(all_rows, entry.file)  # a row named as wrong above still shows its runner ran
        problems += [f"the manifest lists {name} as scored on {entry.file}, but parity.json has no row of it"
                     for name in entry.scored if name not in ran]
        problems += [f"parity.json has a row of {entry.file} on {name}, but the manifest does not list {name} as "
                     f"scored on it (an edgeseg gate stopped before it wrote the manifest? run it again)"
                     for name in ran if name not in entry.scored]
    return problems
