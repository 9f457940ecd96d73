"""libedgeseg refuses an ONNX artifact that keeps a tensor in another file, as the Python runtime
does and in the same words: OpenVINO would read that file, and no sha256 of the manifest covers
it. The walk through the protobuf (csrc/runtime/onnx_form.c) is checked against Python's
(edgeseg/runtime/onnx_form.py) on every placement and on thousands of damaged files, built with
AddressSanitizer and UBSan: a hostile protobuf is refused, never read out of bounds."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeseg.errors import BundleError
from edgeseg.runtime.onnx_form import external_tensor
from tests.onnx_placements import group, key, placements, varint

onnx = pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[2]
ES_EBUNDLE, ES_EBACKEND = 16, 17
PLACEMENTS = placements()


def _with_artifact(bundle: Path, tmp_path: Path, data: bytes, extra: dict[str, bytes] | None = None) -> Path:
    """A copy of ``bundle`` whose FP32 ONNX artifact is ``data``, its sha256 and size recorded."""
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "fp32")
    (copy / entry["file"]).write_bytes(data)
    for name, content in (extra or {}).items():
        (copy / name).write_bytes(content)
    entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _both_refuse(copy: Path, run_checks) -> tuple[int, str]:
    from edgeseg.runtime import Segmenter

    with pytest.raises(BundleError) as caught:
        Segmenter.load(copy, backend="openvino:fp32")
    code, message, _ = run_checks("open", copy, "fp32")
    assert (code, message) == (ES_EBUNDLE, str(caught.value))
    return code, message


@pytest.mark.parametrize("case", list(PLACEMENTS))
def test_both_refuse_an_external_tensor_wherever_it_sits(case, bundle, tmp_path, run_checks):
    data, (name, location) = PLACEMENTS[case]
    _, message = _both_refuse(_with_artifact(bundle, tmp_path, data), run_checks)
    assert f"keeps tensor {name[:80]!r} in another file ({location[:80]!r}), which the manifest's sha256" in message


def test_both_refuse_the_exported_graph_with_its_weights_beside_it(bundle, tmp_path, run_checks):
    """The case that matters: the real FP32 graph with its largest initializer in weights.bin,
    which is there, so OpenVINO would load and run whatever weights.bin holds."""
    from onnx import numpy_helper

    from tests.onnx_placements import externalise

    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "fp32")
    model = onnx.load(str(bundle / entry["file"]))
    tensor = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(tensor).tobytes()
    externalise(tensor, "weights.bin")
    del tensor.external_data[2:]
    for k, v in (("offset", "0"), ("length", str(len(weights)))):
        item = tensor.external_data.add()
        item.key, item.value = k, v
    _, message = _both_refuse(_with_artifact(bundle, tmp_path, model.SerializeToString(), {"weights.bin": weights}),
                              run_checks)
    assert f"keeps tensor {tensor.name!r} in another file ('weights.bin')" in message


@pytest.fixture(scope="module")
def probe(tmp_path_factory, build_tools) -> Path:
    """tests/capi/onnx_form_probe.c on csrc/runtime/onnx_form.c, with the sanitizers."""
    if shutil.which("cc") is None:
        pytest.skip("cc is not installed")
    exe = tmp_path_factory.mktemp("probe") / "onnx_form_probe"
    cmd = ["cc", "-std=c99", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror", *build_tools.san_flags.split(),
           f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'runtime'}", "-o", str(exe),
           str(ROOT / "tests" / "capi" / "onnx_form_probe.c"), str(ROOT / "csrc" / "runtime" / "onnx_form.c")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return exe


def _walk_in_c(probe: Path, paths: list[Path]) -> list[str]:
    """The probe's verdict per file, each file also read by the form check; sanitizer-clean."""
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:exitcode=23", "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    verdicts = []
    for start in range(0, len(paths), 500):
        chunk = paths[start:start + 500]
        result = subprocess.run([str(probe), *map(str, chunk)], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0 and "Sanitizer" not in result.stderr, result.stderr[-4000:]
        lines = result.stdout.splitlines()
        assert len(lines) == 2 * len(chunk) and all(line.startswith("form\t") for line in lines[1::2])
        verdicts += lines[::2]
    return verdicts


def _walk_in_python(path: Path) -> str:
    try:
        found = external_tensor(path)
    except ValueError:
        return "flaw"
    return f"external\t{found[0][:80]!r}\t{found[1][:80]!r}" if found else "none"


def _clean_model() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _ld(number: int, data: bytes) -> bytes:
    return key(number, 2) + varint(len(data)) + data


def _crafted() -> dict[str, bytes]:
    """Hand-made damage inside a graph (field 7) after ir_version, and odd but valid encodings."""
    tensor = _ld(8, b"w") + key(14, 0)
    return {
        "field-number-0": key(1, 0) + b"\x08" + _ld(7, key(0, 0) + b"\x01"),
        "field-number-2^29": key(1, 0) + b"\x08" + _ld(7, key(1 << 29, 0) + b"\x01"),
        "length-past-the-graph": key(1, 0) + b"\x08" + _ld(7, key(2, 2) + b"\x05ab") + b"cdefgh",
        "length-2^64": key(1, 0) + b"\x08" + _ld(7, key(2, 2) + b"\xff" * 9 + b"\x01"),
        "eleven-byte-varint": key(1, 0) + b"\x08" + _ld(7, key(3, 0) + b"\x80" * 10 + b"\x00"),
        "wire-6": key(1, 0) + b"\x08" + _ld(7, _ld(5, key(2, 6))),
        "wire-7": key(1, 0) + b"\x08" + _ld(7, _ld(5, key(2, 7))),
        "fixed-past-the-end": key(1, 0) + b"\x08" + _ld(7, _ld(5, key(2, 1) + b"\x01\x02")),
        "stray-group-end": key(1, 0) + b"\x08" + _ld(7, key(9, 4)),
        "group-closed-as-another": key(1, 0) + b"\x08" + _ld(7, key(9, 3) + key(10, 4)),
        "group-never-closed": key(1, 0) + b"\x08" + _ld(7, key(9, 3) + key(1, 0) + b"\x01"),
        "group-across-the-graph-end": key(1, 0) + b"\x08" + _ld(7, key(9, 3)) + key(9, 4),
        "groups-nested-90": key(1, 0) + b"\x08" + _ld(7, group(9, b"".join(key(9, 3) for _ in range(89))
                                                                 + b"".join(key(9, 4) for _ in range(89)))),
        # data_location EXTERNAL (1) in 64 bits but not as the number (Python's int reads it whole)
        "data-location-beyond-64-bits": key(1, 0) + b"\x08" + _ld(7, _ld(5, tensor + b"\x81" + b"\x80" * 8 + b"\x7e")),
        "data-location-as-bytes": key(1, 0) + b"\x08" + _ld(7, _ld(5, _ld(8, b"w") + _ld(14, b"\x01"))),
        "entries-as-fixed32": key(1, 0) + b"\x08" + _ld(7, _ld(5, _ld(8, b"w") + key(13, 5) + b"abcd")),
        "location-key-as-varint": key(1, 0) + b"\x08" + _ld(7, _ld(5, _ld(8, b"w") + _ld(13, key(1, 0) + b"\x80" * 8 + b"\x40"))),
        "location-key-without-value": key(1, 0) + b"\x08" + _ld(7, _ld(5, _ld(8, b"w") + _ld(13, _ld(1, b"location")))),
        "name-as-fixed32": key(1, 0) + b"\x08" + _ld(7, _ld(5, key(8, 5) + b"abcd" + key(14, 0) + b"\x01")),
        "invalid-utf8-name": key(1, 0) + b"\x08" + _ld(7, _ld(5, _ld(8, b"a\xffb\xe2\x82c\xf0\x9f\x98\x80\xed\xa0\x80") + key(14, 0) + b"\x01")),
        "empty": b"",
    }


def test_the_c_walk_agrees_with_python_on_damaged_and_odd_files(probe, tmp_path):
    """Every prefix of each placement, seeded random byte edits of them, and hand-made damage:
    the C walk finds the same external tensor (quoted alike), none, or refuses the form where
    Python's raises ValueError; the sanitizers see no out-of-bounds read or undefined behaviour."""
    files = {f"crafted-{k}": v for k, v in _crafted().items()}
    files["clean"] = _clean_model()
    rng = random.Random(0)
    for case, (data, _) in PLACEMENTS.items():
        files[case] = data
        for cut in range(0, len(data), 1 if case in ("initializer", "two-tensors", "behind-groups", "function") else 7):
            files[f"{case}-cut-{cut}"] = data[:cut]
        for i in range(60):
            edited = bytearray(data)
            at = rng.randrange(len(edited))
            how = rng.randrange(4)
            if how == 0:
                edited[at] ^= 1 << rng.randrange(8)
            elif how == 1:
                edited[at] = rng.choice([0x00, 0x7F, 0x80, 0xFF, 0x08, 0x0B, 0x0C, 0x12])
            elif how == 2:
                edited.insert(at, rng.randrange(256))
            else:
                del edited[at]
            files[f"{case}-edit-{i}"] = bytes(edited)
    paths = []
    for name, data in files.items():
        paths.append(tmp_path / f"{name}.onnx")
        paths[-1].write_bytes(data)
    verdicts = dict(zip(files, _walk_in_c(probe, paths)))
    expected = {name: _walk_in_python(path) for name, path in zip(files, paths)}
    differ = {name: (verdicts[name], expected[name]) for name in files if verdicts[name] != expected[name]
              and not (expected[name] == "flaw" and verdicts[name].startswith("flaw\t"))}
    assert not differ, list(differ.items())[:5]
    outcomes = {v.split("\t")[0] for v in verdicts.values()}
    assert outcomes == {"external", "none", "flaw"}  # the corpus reaches every outcome
    assert all(verdicts[f"crafted-{k}"].startswith("flaw\t") for k in _crafted() if k not in (
        "groups-nested-90", "data-location-beyond-64-bits", "data-location-as-bytes", "entries-as-fixed32",
        "location-key-as-varint", "location-key-without-value", "name-as-fixed32", "invalid-utf8-name", "empty"))


def _tower(levels: int, innermost: bytes) -> bytes:
    """A model of `levels` If nodes each holding the next graph as its then_branch, the last
    graph's initializer `innermost`: message nesting 3 * levels + 2 at that tensor."""
    y = _ld(1, b"y") + _ld(2, _ld(1, key(1, 0) + b"\x01"))
    graph = _ld(5, innermost) + _ld(12, y)
    for _ in range(levels):
        attribute = _ld(1, b"then_branch") + _ld(6, graph) + key(20, 0) + b"\x05"
        graph = _ld(1, _ld(1, b"c") + _ld(2, b"y") + _ld(4, b"If") + _ld(5, attribute)) + _ld(12, y)
    return key(1, 0) + b"\x08" + _ld(7, graph) + _ld(8, _ld(1, b"") + key(2, 0) + b"\x11")


def test_nesting_beyond_protobufs_limit_is_refused_as_the_engines_refuse_it(probe, tmp_path):
    """Python's walk has no depth limit; the C walk stops at protobuf's (100), where ONNX Runtime's
    and OpenVINO's parsers stop too: no graph they load is refused, and a deeper one with an
    external tensor at its bottom is refused by both runtimes (by C as not an ONNX model)."""
    import onnxruntime

    tensor = _ld(8, b"w") + key(14, 0) + b"\x01"
    files = {"within": _tower(32, _ld(8, b"w")), "within-external": _tower(32, tensor),
             "beyond": _tower(33, _ld(8, b"w")), "beyond-external": _tower(33, tensor)}
    paths = [tmp_path / f"{name}.onnx" for name in files]
    for path, data in zip(paths, files.values()):
        path.write_bytes(data)
    verdicts = dict(zip(files, _walk_in_c(probe, paths)))
    assert verdicts["within"] == "none" and verdicts["within-external"] == "external\t'w'\t'?'"
    assert verdicts["beyond"].startswith("flaw\t") and verdicts["beyond-external"].startswith("flaw\t")
    assert _walk_in_python(paths[3]) == "external\t'w'\t'?'"
    with pytest.raises(Exception) as within:  # parsed, then refused as an If without its else_branch
        onnxruntime.InferenceSession(str(paths[0]), providers=["CPUExecutionProvider"])
    assert "protobuf parsing failed" not in str(within.value).lower()
    with pytest.raises(Exception, match="(?i)protobuf parsing failed"):
        onnxruntime.InferenceSession(str(paths[2]), providers=["CPUExecutionProvider"])


def test_both_open_a_model_holding_unknown_groups(bundle, tmp_path, run_checks):
    """Groups (wire types 3 and 4) of fields onnx.proto does not declare, in the model and in
    its graph, are skipped by protobuf: ONNX Runtime and OpenVINO load such a model, and now
    libedgeseg opens it too instead of calling it no ONNX model."""
    from edgeseg.runtime import Segmenter

    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "fp32")
    model = onnx.load(str(bundle / entry["file"]))
    graph = model.graph.SerializeToString() + group(100, key(1, 0) + b"\x05" + group(101))
    model.ClearField("graph")
    # after the graph: OpenVINO recognises an ONNX file by the fields it starts with
    data = model.SerializeToString() + _ld(7, graph) + group(99)
    copy = _with_artifact(bundle, tmp_path, data)
    with Segmenter.load(copy, backend="openvino:fp32") as seg:
        assert seg.runner.name == "openvino"
    code, message, _ = run_checks("open", copy, "fp32")
    assert (code, message) == (0, "opened")
