"""The old-bundle copies of tests/old_bundles.py make the changes their variant names, and only
those: the tests of both runtimes take each variant's expected outcome on trust, so a variant
that edited nothing (or the wrong row) would make them check the wrong thing."""

from __future__ import annotations

import json

import pytest

from tests.old_bundles import VARIANTS, old_bundle

FILES = {"model.ts": "a" * 64, "model.onnx": "b" * 64, "model.int8.onnx": "c" * 64}
RUNNERS = {"model.ts": ["torchscript"], "model.onnx": ["onnxruntime", "openvino"],
           "model.int8.onnx": ["onnxruntime", "openvino"]}


@pytest.fixture()
def bundle(tmp_path):
    """A bundle folder with the manifest and parity report fields the variants edit."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    artifacts = [{"file": f, "sha256": s, "scored": RUNNERS[f], "excluded": {}} for f, s in FILES.items()]
    rows = [{"file": f, "sha256": FILES[f], "runner": r, "passed": True} for f in FILES for r in RUNNERS[f]]
    (folder / "manifest.json").write_text(json.dumps({"artifacts": artifacts}))
    (folder / "parity.json").write_text(json.dumps({"results": rows}))
    (folder / "model.ts").write_bytes(b"weights")
    return folder


def _read(folder):
    return json.loads((folder / "manifest.json").read_text()), json.loads((folder / "parity.json").read_text())


def _changes(before: list[dict], after: list[dict]) -> tuple[list, list]:
    """Rows only in ``before``, rows only in ``after`` (compared as sorted JSON)."""
    key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
    b, a = {key(r) for r in before}, {key(r) for r in after}
    return sorted(b - a), sorted(a - b)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_drops_scored_and_edits_what_it_names(bundle, tmp_path, variant):
    original_manifest, original_report = _read(bundle)
    copy = old_bundle(bundle, tmp_path / variant, variant)
    manifest, report = _read(copy)
    assert (copy / "model.ts").read_bytes() == b"weights"
    assert all("scored" not in a for a in manifest["artifacts"])
    assert [a["sha256"] for a in manifest["artifacts"]] == list(FILES.values())
    gone, added = _changes(original_report["results"], report["results"])
    excluded = {a["file"]: a["excluded"] for a in manifest["artifacts"]}
    if variant in ("as-exported", "a-passed-row-excluded"):  # the latter edits the manifest alone
        assert (gone, added) == ([], [])
    elif variant == "rows-without-sha256":
        assert len(gone) == len(added) == 5 and all("sha256" not in row for row in report["results"])
    elif variant == "no-openvino-rows":
        assert added == [] and len(gone) == 2 and all(r["runner"] != "openvino" for r in report["results"])
    elif variant == "an-artifact-without-rows":
        assert added == [] and len(gone) == 1 and all(r["file"] != "model.ts" for r in report["results"])
    elif variant == "a-row-of-another-file":
        assert gone == [] and [json.loads(r)["file"] for r in added] == ["model.fp16.onnx"]
    else:  # one row changed in place
        assert len(gone) == len(added) == 1, (gone, added)
        row = json.loads(added[0])
        changed = {"a-row-of-other-bytes": ("sha256", "0" * 64), "a-nul-in-a-runner": ("runner", "onnxruntime\0"),
                   "a-runner-not-text": ("runner", 7), "a-failed-row-not-excluded": ("passed", False),
                   "a-failed-row-excluded": ("passed", False)}[variant]
        assert row[changed[0]] == changed[1]
    if variant in ("a-failed-row-excluded", "a-passed-row-excluded"):
        assert excluded["model.int8.onnx"] == {"openvino": "dice drop 0.2 > 0.05"}
    else:
        assert all(e == {} for e in excluded.values())
    assert original_manifest != manifest  # the source bundle is left as it was
    assert _read(bundle) == (original_manifest, original_report)
