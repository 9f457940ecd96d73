"""es_provenance: a C application gets the record the Python runtime writes into its outputs, for
the same bundle and artifact on OpenVINO, and the sha256 values match hashlib's of the files."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from edgeseg.runtime.provenance import provenance
from edgeseg.runtime.segmenter import Segmenter

ES_OK = 0


def _record(lines: list[str]) -> dict[str, str]:
    return dict(line.split("\t")[1:] for line in lines if line.startswith("provenance\t"))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_c_record_is_the_python_record(bundle, run_checks, precision):
    code, message, lines = run_checks("open", bundle, precision)
    assert (code, message) == (ES_OK, "opened")
    record = _record(lines)
    with Segmenter.load(bundle, backend=f"openvino:{precision}") as segmenter:
        assert record == provenance(segmenter)
    manifest = json.loads((bundle / "manifest.json").read_text())
    [entry] = [a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == precision]
    assert record["manifest_sha256"] == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert record["artifact_sha256"] == hashlib.sha256((bundle / entry["file"]).read_bytes()).hexdigest()
    assert (record["artifact"], record["backend"], record["precision"]) == (entry["file"], "openvino", precision)
    assert "server_backend" not in record  # a key the record does not hold is NULL
    assert "provenance-after-set-tta\tmirror" in lines
    assert "provenance-null\t1" in lines


def test_a_manifest_without_model_or_source_leaves_those_keys_out(bundle, tmp_path, run_checks):
    """As the Python record leaves empty values out; the manifest's sha256 is of its bytes as read."""
    import shutil

    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"], manifest["source"], manifest["created"] = None, None, ""
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=1))
    code, _, lines = run_checks("open", copy, "fp32")
    assert code == ES_OK
    record = _record(lines)
    with Segmenter.load(copy, backend="openvino:fp32") as segmenter:
        assert record == provenance(segmenter)
    assert not {"architecture", "checkpoint_sha256", "bundle_created"} & set(record)
    assert record["manifest_sha256"] == hashlib.sha256((copy / "manifest.json").read_bytes()).hexdigest()


def test_the_cpp_wrapper_reads_the_record(sdk, bundle, tmp_path, build_tools):
    source = tmp_path / "provenance.cpp"
    source.write_text('#include <iostream>\n#include <edgeseg.hpp>\n'
                      'int main(int, char **argv) {\n'
                      '    edgeseg::Segmenter seg(argv[1], "fp32");\n'
                      '    std::cout << seg.provenance("manifest_sha256") << "|" << seg.provenance("nope") << "|\\n";\n'
                      '}\n')
    exe = build_tools.compile(sdk, source, tmp_path / "provenance")
    done = subprocess.run([str(exe), str(bundle)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest() + "||\n"
