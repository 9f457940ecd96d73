"""es_open's "auto" precision skips what the Python runtime's auto skips for OpenVINO: an artifact
the export gate excluded for the openvino runner or never ran on it (a ``scored`` list without
openvino), and an INT8 graph not of the cpu scheme on an
x86 CPU without VNNI. An explicit precision still opens it.

The expected choice comes from this machine's /proc/cpuinfo read here, and is checked against the
Python runtime's own rule (selection.skip_reasons) on the same manifest.
"""

from __future__ import annotations

import json
import platform
import shutil

import pytest

ES_OK, ES_EBUNDLE = 0, 16


def _vnni_or_unknown() -> bool:
    """True unless this is an x86 CPU whose flags are known and show none of the VNNI forms."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return True
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return not flags or bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def _edited(bundle, tmp_path, edit):
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["format"] == "onnx":
            edit(entry)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _python_auto_choice(bundle) -> str | None:
    """The ONNX precision the Python rules let OpenVINO's auto run first (int8, fp32, fp16)."""
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.selection import skip_reasons

    entries = {e.precision: e for e in read_manifest(bundle).artifacts if e.format == "onnx"}
    return next((p for p in ("int8", "fp32", "fp16") if p in entries and not skip_reasons(entries[p], "openvino")), None)


def _opened(run_checks, bundle, precision):
    code, message, lines = run_checks("open", bundle, precision)
    assert (code, message) == (ES_OK, "opened"), message
    return next(line.split("\t")[1] for line in lines if line.startswith("artifact\t"))


@pytest.mark.parametrize("runner, auto", [("openvino", "int8-skipped"), ("onnxruntime", "int8")])
def test_only_a_gate_exclusion_for_openvino_is_skipped_by_auto(runner, auto, bundle, tmp_path, run_checks):
    def exclude_int8(entry):
        if entry["precision"] == "int8":
            entry["excluded"] = {runner: "dice drop 0.0123 > 0.01"}
    copy = _edited(bundle, tmp_path, exclude_int8)
    expected = "fp32" if auto == "int8-skipped" else "int8"
    assert _opened(run_checks, copy, "auto") == f"onnx-{expected}"
    assert _python_auto_choice(copy) == expected
    assert _opened(run_checks, copy, "int8") == "onnx-int8"  # by precision it still opens


@pytest.mark.parametrize("scheme", ["tensorrt", None], ids=["tensorrt-scheme", "before-schemes"])
def test_a_signed_int8_graph_is_skipped_on_a_cpu_without_vnni(scheme, bundle, tmp_path, run_checks):
    def mark(entry):
        if entry["precision"] == "int8":
            entry.setdefault("extra", {}).pop("int8_scheme", None)
            if scheme:
                entry["extra"]["int8_scheme"] = scheme
    copy = _edited(bundle, tmp_path, mark)
    expected = "onnx-int8" if _vnni_or_unknown() else "onnx-fp32"
    assert _opened(run_checks, copy, "auto") == expected
    assert f"onnx-{_python_auto_choice(copy)}" == expected
    assert _opened(run_checks, copy, "int8") == "onnx-int8"


def test_the_cpu_scheme_is_run_everywhere(bundle, run_checks):
    manifest = json.loads((bundle / "manifest.json").read_text())
    int8 = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "int8")
    assert int8["extra"]["int8_scheme"] == "cpu"
    assert _opened(run_checks, bundle, "auto") == "onnx-int8"


def test_nothing_auto_may_run_is_one_line_naming_each_reason(bundle, tmp_path, run_checks):
    def exclude_all(entry):
        entry["excluded"] = {"openvino": f"{entry['precision']} refused\nsecond line"}
    copy = _edited(bundle, tmp_path, exclude_all)
    onnx = sorted(a["precision"] for a in json.loads((copy / "manifest.json").read_text())["artifacts"]
                  if a["format"] == "onnx")
    assert onnx == ["fp32", "int8"]
    code, message, _ = run_checks("open", copy, "auto")
    assert code == ES_EBUNDLE
    assert "auto may run none" in message and "\n" not in message
    assert "onnx-int8: the export gate excluded openvino: int8 refused second line" in message
    assert "onnx-fp32: the export gate excluded openvino: fp32 refused" in message
    assert _python_auto_choice(copy) is None


@pytest.mark.parametrize("excluded", [["openvino"], {"openvino": 3}, "openvino"])
def test_excluded_must_map_runners_to_reasons(excluded, bundle, tmp_path, run_checks):
    from edgeseg.errors import BundleError
    from edgeseg.runtime.manifest import read_manifest

    copy = _edited(bundle, tmp_path, lambda entry: entry.update(excluded=excluded))
    code, message, _ = run_checks("open", copy, "fp32")
    assert code == ES_EBUNDLE and "'excluded' must map backend names to reasons" in message
    with pytest.raises(BundleError):
        read_manifest(copy)


@pytest.mark.parametrize("scored, auto", [(["onnxruntime"], "fp32"), (["onnxruntime", "openvino"], "int8"), (None, "fp32")],
                         ids=["unscored", "scored", "not-recorded"])
def test_an_int8_graph_the_gate_never_ran_on_openvino_is_skipped_by_auto(scored, auto, bundle, tmp_path, run_checks):
    """A manifest listing the runners the gate scored (``scored``) without openvino: OpenVINO was
    not installed where the bundle was exported, so auto does not run that artifact on it; nor
    where the manifest has no list (from before the gate recorded it, whose gate is known to have
    run ONNX Runtime alone on INT8): there the FP32 graph, which needs no gate, is opened. The
    report's rows name no sha256 here (as before 2026-12-06), so they do not stand in for the list
    (tests/capi/test_parity_record.py covers rows that do)."""
    def mark(entry):
        entry.pop("scored", None)
        if entry["precision"] == "int8" and scored is not None:
            entry["scored"] = scored
    copy = _edited(bundle, tmp_path, mark)
    report = json.loads((copy / "parity.json").read_text())
    for row in report["results"]:
        row.pop("sha256", None)
    (copy / "parity.json").write_text(json.dumps(report))
    assert _opened(run_checks, copy, "auto") == f"onnx-{auto}"
    assert _python_auto_choice(copy) == auto
    assert _opened(run_checks, copy, "int8") == "onnx-int8"  # by precision it still opens
    if auto == "fp32":
        def unscore_all(entry):
            entry["scored"] = ["onnxruntime"]
        code, message, _ = run_checks("open", _edited(bundle, tmp_path / "all", unscore_all), "auto")
        assert code == ES_EBUNDLE and "onnx-int8: not scored by the export gate: openvino was not installed" in message


@pytest.mark.parametrize("scored", [{"openvino": "x"}, ["openvino", 3], "openvino", [""]])
def test_scored_must_list_runner_names(scored, bundle, tmp_path, run_checks):
    from edgeseg.errors import BundleError
    from edgeseg.runtime.manifest import read_manifest

    copy = _edited(bundle, tmp_path, lambda entry: entry.update(scored=scored))
    code, message, _ = run_checks("open", copy, "fp32")
    assert code == ES_EBUNDLE and "'scored' must list backend names" in message
    with pytest.raises(BundleError):
        read_manifest(copy)
