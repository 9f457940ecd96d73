"""``edgeseg inspect`` is what one runs on a bundle from elsewhere before trusting it, so a hostile
one gets the same one-line refusal as any bad input: JSON nested deeper than Python's parser
recurses, and a TorchScript archive whose embedded spec inflates to gigabytes, are named, never a
traceback or an allocation of what the archive claims."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest

from tests.export.test_inspect_embedded import copy, inspect  # noqa: F401 - copy is a fixture

DEEP = "[" * 100_000 + "]" * 100_000


def replace_extra(bundle, name: str, data: bytes) -> None:
    """Put ``data`` (deflated) as ``model.ts``'s extra file ``name``, the manifest's sha256 and
    size recorded for the new archive."""
    path = bundle / "model.ts"
    with zipfile.ZipFile(path) as old:
        members = [(info, old.read(info)) for info in old.infolist()]
    with zipfile.ZipFile(path, "w") as new:
        for info, content in members:
            if info.filename.endswith(f"/extra/{name}"):
                info.compress_type, content = zipfile.ZIP_DEFLATED, data
            new.writestr(info, content)
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.ts")
    entry.update(sha256=hashlib.sha256(path.read_bytes()).hexdigest(), bytes=path.stat().st_size)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_a_parity_report_nested_too_deeply_is_one_line(copy, assert_one_line_error):
    (copy / "parity.json").write_text(DEEP)
    assert_one_line_error(inspect(copy), "parity.json: not a readable parity report")


@pytest.mark.parametrize(("name", "message"), [("spec.json", "model.ts: its embedded spec is not readable"),
                                               ("labels.json", "model.ts: its embedded labels are not readable")])
def test_embedded_json_nested_too_deeply_is_a_failed_check(copy, assert_one_line_error, name, message):
    replace_extra(copy, name, DEEP.encode())
    proc = inspect(copy)
    assert_one_line_error(proc, message)


def test_an_embedded_spec_that_inflates_past_the_limit_is_refused_unread(copy, assert_one_line_error):
    from edgeseg.export.embedded import MAX_EXTRA_BYTES

    replace_extra(copy, "spec.json", b" " * (8 * MAX_EXTRA_BYTES))  # deflates to a few kB
    assert (copy / "model.ts").stat().st_size < 2 * MAX_EXTRA_BYTES
    proc = inspect(copy)
    assert_one_line_error(proc, f"model.ts: its embedded spec and labels cannot be read (archive/extra/spec.json "
                                f"inflates to more than {MAX_EXTRA_BYTES} bytes)")


@pytest.mark.parametrize("commit", [5, {"a": 1}, ["0123456789abcdef"]])
def test_a_provenance_commit_of_another_type_is_shown_not_a_traceback(copy, commit):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source"]["export"]["git_commit"] = commit
    manifest["source"]["training"]["sessions"][0]["git_commit"] = commit
    (copy / "manifest.json").write_text(json.dumps(manifest))
    proc = inspect(copy)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.count(f"(git {str(commit)[:12]}") == 2


def test_a_calibration_record_counting_a_class_by_another_key_is_shown_as_written(copy):
    """with_class counts slices per class value; a key that is no integer (a hand-edited record)
    was turned into one to find its name, a ValueError traceback."""
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["calibration"]["with_class"] = {"1": 5, "liver": 3}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    proc = inspect(copy)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("INT8 calibration:"))
    assert "with target, liver 5, liver 3, " in line
