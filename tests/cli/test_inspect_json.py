"""`edgeseg inspect --json FILE`: what the text shows, for a deployment pipeline, checked against
the bundle's files and the checkpoint read directly; a failed check named in it; the documented
keys those written."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeseg.cli.inspect import bundle_text, checkpoint_text

DOC = Path(__file__).resolve().parents[2] / "docs" / "export.md"
SUMMARY = Path(__file__).resolve().parents[2] / "edgeseg" / "export" / "bundle_summary.py"


def inspect(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg", "inspect", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def copy(exported_bundle, tmp_path):
    return shutil.copytree(exported_bundle, tmp_path / "bundle")


def test_bundle_json_is_what_the_manifest_and_the_files_say(exported_bundle, tmp_path):
    proc = inspect(exported_bundle, "--json", tmp_path / "inspect.json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "inspect.json").read_text())
    manifest = json.loads((exported_bundle / "manifest.json").read_text())
    assert (record["schema"], record["kind"], record["passed"], record["failed"]) == (1, "bundle", True, [])
    for key in ("model", "spec", "labels", "postprocess", "max_batch", "inputs", "outputs", "calibration", "source"):
        assert record[key] == manifest[key], key
    assert (record["bundle_schema"], record["created"]) == (manifest["schema"], manifest["created"])
    assert [a["file"] for a in record["artifacts"]] == [a["file"] for a in manifest["artifacts"]]
    for row, entry in zip(record["artifacts"], manifest["artifacts"]):
        data = (exported_bundle / entry["file"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert row["bytes"] == len(data) and row["hash_check"] == "ok" and row["hash_problem"] is None
        assert row["key"] == f"{entry['format']}-{entry['precision']}" and row["precision"] == entry["precision"]
    parity = json.loads((exported_bundle / "parity.json").read_text())
    assert record["parity"]["report"] == parity
    assert {(r["key"], r["run_on"], r["passed"], r["dice_drop"]) for r in record["parity"]["report"]["results"]} \
        == {(r["key"], r["run_on"], r["passed"], r["dice_drop"]) for r in parity["results"]}
    # the text is made from the record alone: everything it shows is in the JSON
    assert bundle_text(record) == proc.stdout.rstrip("\n")


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_checkpoint_json_is_what_torch_load_reads(trained_checkpoint, tmp_path, name):
    path = trained_checkpoint.parent / name
    proc = inspect(path, "--json", tmp_path / "inspect.json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "inspect.json").read_text())
    payload = torch.load(path, weights_only=True)
    assert (record["schema"], record["kind"], record["path"]) == (1, "checkpoint", str(path))
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and record["bytes"] == path.stat().st_size
    assert record["epoch"] == payload["epoch"] and record["epochs"] == payload["train_config"]["epochs"]
    assert record["best"] == {"epoch": payload["best"]["epoch"], "val_dice": payload["best"]["val_dice"]}
    assert record["class_names"] == list(payload["class_names"]) and record["spec"] == payload["spec"]
    assert record["model"] == payload["model"] and record["provenance"] == payload.get("provenance")
    assert record["split"] == {part: len(cases) for part, cases in payload["split"].items()}
    assert record["weight_bytes"] == sum(t.numel() * t.element_size() for t in payload["state_dict"].values())
    assert (record["resume"] is None) == ("optimizer" not in payload)
    assert checkpoint_text(record) == proc.stdout.rstrip("\n")


def _tamper_model(bundle):
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))


def _fail_gate(bundle):
    parity = json.loads((bundle / "parity.json").read_text())
    parity["passed"] = False
    (bundle / "parity.json").write_text(json.dumps(parity))


def _rename_class(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["labels"]["1"] = "spleen"
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("damage", "check", "artifact"), [
    (_tamper_model, "hash", "onnx-fp32"),
    (lambda bundle: (bundle / "parity.json").unlink(), "parity-missing", None),
    (_fail_gate, "parity-gate", None),
    (_rename_class, "embedded", None),
])
def test_a_damaged_bundle_exits_2_and_its_json_names_the_failed_check(copy, tmp_path, assert_one_line_error, damage,
                                                                      check, artifact):
    damage(copy)
    proc = inspect(copy, "--json", tmp_path / "inspect.json")
    record = json.loads((tmp_path / "inspect.json").read_text())
    assert_one_line_error(proc, f"bundle {copy} failed {len(record['failed'])} check(s): ")
    assert record["passed"] is False
    assert {"check": check, "artifact": artifact} in [{k: f[k] for k in ("check", "artifact")} for f in record["failed"]]
    assert all(f["message"] in proc.stderr for f in record["failed"])
    hash_checks = {a["key"]: a["hash_check"] for a in record["artifacts"]}
    assert hash_checks == {key: "failed" if key == artifact else "ok" for key in hash_checks}
    assert bundle_text(record) == proc.stdout.rstrip("\n")


@pytest.mark.parametrize(("where", "expected"), [
    (lambda bundle, out: (bundle / "absent", out), "does not exist"),
    (lambda bundle, out: (bundle, bundle / "inspect.json"), "is inside the bundle"),
    (lambda bundle, out: (bundle, bundle / "manifest.json"), "is inside the bundle"),
    (lambda bundle, out: (bundle / "best.pt", bundle / "best.pt"), "is the checkpoint"),
    (lambda bundle, out: (bundle, out.parent), "is a directory"),
])
def test_bad_input_is_one_line_with_nothing_printed_or_written(copy, trained_checkpoint, tmp_path,
                                                               assert_one_line_error, where, expected):
    shutil.copy(trained_checkpoint, copy / "best.pt")
    before = {p: p.read_bytes() for p in copy.iterdir()}
    target, out = where(copy, tmp_path / "inspect.json")
    proc = inspect(target, "--json", out)
    assert_one_line_error(proc, expected)
    assert proc.stdout == "" and not (tmp_path / "inspect.json").exists()
    assert {p: p.read_bytes() for p in copy.iterdir()} == before


def test_an_unreadable_parity_report_writes_no_json(copy, tmp_path, assert_one_line_error):
    (copy / "parity.json").write_text("[" * 100_000 + "]" * 100_000)
    proc = inspect(copy, "--json", tmp_path / "inspect.json")
    assert_one_line_error(proc, "parity.json: not a readable parity report")
    assert proc.stdout == "" and not (tmp_path / "inspect.json").exists()


def _documented(kind: str) -> set[str]:
    """The keys of the docs' table for ``kind`` (the first cell's code spans)."""
    section = DOC.read_text().split("## Inspecting as JSON", 1)[1].split("\n## ", 1)[0]
    table = section.split(f'(`"kind": "{kind}"`):', 1)[1].split("\n\n", 2)[1]
    return {key for line in table.splitlines()[2:] for key in re.findall(r"`([^`]+)`", line.split(" | ")[0])}


def _emitted(record: dict) -> set[str]:
    keys = set(record)
    for name in ("artifacts", "failed"):
        keys |= {f"{name}[].{key}" for item in record.get(name) or [] for key in item}
    keys |= {f"parity.{key}" for key in record.get("parity") or {}}
    return keys


def test_the_documented_keys_are_those_written(copy, trained_checkpoint, tmp_path):
    _tamper_model(copy)  # a failed check, so that failed[] has an entry
    inspect(copy, "--json", tmp_path / "bundle.json")
    inspect(trained_checkpoint.parent / "last.pt", "--json", tmp_path / "checkpoint.json")
    bundle = json.loads((tmp_path / "bundle.json").read_text())
    checkpoint = json.loads((tmp_path / "checkpoint.json").read_text())
    assert _documented("bundle") == _emitted(bundle)
    assert _documented("checkpoint") == _emitted(checkpoint)
    # every check the summary can fail is documented by name
    row = next(line for line in DOC.read_text().splitlines() if line.startswith("| `failed[].check` |"))
    names = set(re.findall(r"`([a-z-]+)`", row.split(" | ", 1)[1]))
    assert set(re.findall(r'_failure\("([a-z-]+)"', SUMMARY.read_text())) == names


def test_a_logit_difference_that_overflowed_is_null_in_strict_json_and_inf_in_the_text(copy, tmp_path):
    """The gate records an artifact whose logits overflowed with max |d| inf (excluded from the
    runner it overflowed on); JSON has no inf, and strict parsers (jq, JavaScript) refuse one."""
    parity = json.loads((copy / "parity.json").read_text())
    parity["results"][0]["max_abs"] = float("inf")
    (copy / "parity.json").write_text(json.dumps(parity))
    proc = inspect(copy, "--json", tmp_path / "inspect.json")
    assert proc.returncode == 0, proc.stderr

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    record = json.loads((tmp_path / "inspect.json").read_text(), parse_constant=refuse)
    assert record["parity"]["report"]["results"][0]["max_abs"] is None
    first = parity["results"][0]
    row = next(line for line in proc.stdout.splitlines() if line.split()[:2] == [first["key"], first["run_on"]])
    assert row.split()[2] == "inf"
