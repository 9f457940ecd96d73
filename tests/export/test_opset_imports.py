"""Exported graphs load on the oldest onnxruntime edgeseg declares (1.17).

ONNX Runtime refuses a graph that imports a domain at a version newer than it knows, even when no
node of the graph uses that domain; a newer onnxruntime's quantiser imports every domain it knows
(ai.onnx.ml 5, com.microsoft.nchwc, org.pytorch.aten, ...), so a bundle's INT8 graph exported with
it would not load on an edge box with onnxruntime 1.17. The oracle here is the set of the graph's
node domains.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeseg.errors import BackendError
from edgeseg.runtime.manifest import sha256_file
from edgeseg.runtime.runners.onnxruntime import load_error


def _domain(name: str) -> str:
    return "" if name == "ai.onnx" else name


def test_exported_graphs_import_only_the_domains_their_nodes_use(bundle):
    import onnx

    manifest = json.loads((bundle["bundle"] / "manifest.json").read_text())
    files = {a["file"]: a["sha256"] for a in manifest["artifacts"] if a["file"].endswith(".onnx")}
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx"} <= set(files)
    for file, recorded in files.items():
        model = onnx.load(str(bundle["bundle"] / file))
        imported = [_domain(op.domain) for op in model.opset_import]
        assert sorted(imported) == sorted({_domain(node.domain) for node in model.graph.node}), file
        assert sha256_file(bundle["bundle"] / file) == recorded, file  # pruned before it was hashed
    parity = json.loads((bundle["bundle"] / "parity.json").read_text())
    rows = [row for row in parity["results"] if row.get("file") in files]
    assert rows and all(row["sha256"] == files[row["file"]] for row in rows)


def test_the_calibration_reader_feeds_batches_onnxruntime_can_stack(bundle, tmp_path):
    """ONNX Runtime's histogram calibration stacks every batch's outputs with np.asarray; 12 slices
    read 8 at a time left a batch of 4 that it refused ("inhomogeneous shape")."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    from edgeseg.export.int8 import _reader_class

    images = np.random.default_rng(0).uniform(0, 1, (12, 1, 64, 64)).astype(np.float32)
    reader = _reader_class()(images, "image", False)
    assert len({b.shape for b in reader.batches}) == 1
    assert np.array_equal(np.concatenate(reader.batches), images)
    quantize_static(str(bundle["bundle"] / "model.onnx"), str(tmp_path / "int8.onnx"), reader,
                    quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.Entropy)
    assert (tmp_path / "int8.onnx").stat().st_size > 0


def _refused_by_onnxruntime(tmp_path, imports: list[tuple[str, int]]) -> BackendError:
    """load_error of onnxruntime's own refusal of an Identity graph with ``imports``."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in imports])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.int8.onnx"))
    with pytest.raises(Exception) as refused:
        ort.InferenceSession(str(tmp_path / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    error = load_error("model.int8.onnx", ort.__version__, refused.value)
    assert isinstance(error, BackendError) and "\n" not in str(error)
    return error


def test_a_graph_importing_a_newer_domain_version_is_refused_in_one_line(tmp_path):
    import onnxruntime as ort

    error = _refused_by_onnxruntime(tmp_path, [("", 17), ("ai.onnx.ml", 99)])
    assert str(error).startswith(f"onnxruntime {ort.__version__} could not load model.int8.onnx: it imports opset 99 "
                                 "of domain ai.onnx.ml")
    assert "install onnxruntime>=1.18 or export the bundle again" in str(error)


@pytest.mark.parametrize(("imports", "domain"), [([("", 99)], "ai.onnx"),
                                                 ([("", 17), ("com.microsoft", 99)], "com.microsoft")])
def test_a_newer_version_of_a_domain_nodes_use_gets_no_re_export_advice(tmp_path, imports, domain):
    """Re-exporting does not drop a domain the graph's nodes use, nor is onnxruntime 1.18 known to
    take it: the line names the artifact, domain and opset, and onnxruntime's own message."""
    import onnxruntime as ort

    error = str(_refused_by_onnxruntime(tmp_path, imports))
    assert error.startswith(f"onnxruntime {ort.__version__} could not load model.int8.onnx: it imports opset 99 "
                            f"of domain {domain}, and this onnxruntime knows it up to opset ")
    assert "1.18" not in error and "export the bundle again" not in error
    assert "Opset 99 is under development" in error  # onnxruntime's own words


def _tidied_imports(tmp_path, model) -> dict[str, int]:
    """The opset imports of ``model`` once the INT8 exporter has tidied it; onnx.checker passes it."""
    import onnx

    from edgeseg.export.int8 import _tidy_graph

    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.int8.onnx"))
    _tidy_graph(tmp_path / "model.int8.onnx")
    tidied = onnx.load(str(tmp_path / "model.int8.onnx"))
    onnx.checker.check_model(tidied)
    return {op.domain: op.version for op in tidied.opset_import}


def test_a_domain_used_only_inside_an_if_branch_stays_imported(tmp_path):
    from onnx import TensorProto, helper

    def branch(name: str, node) -> object:
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1])])

    then = branch("then", helper.make_node("Gelu", ["x"], ["then_y"], domain="com.microsoft"))
    other = branch("else", helper.make_node("Identity", ["x"], ["else_y"]))
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1),
                                                    helper.make_opsetid("ai.onnx.ml", 5)])
    assert _tidied_imports(tmp_path, model) == {"": 17, "com.microsoft": 1}


def test_a_graph_calling_a_local_function_keeps_the_ai_onnx_import(tmp_path):
    from onnx import TensorProto, helper

    function = helper.make_function("local", "Copy", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])],
                                    [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("Copy", ["x"], ["y"], domain="local")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, functions=[function], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1), helper.make_opsetid("ai.onnx.ml", 5)])
    assert _tidied_imports(tmp_path, model) == {"": 17, "local": 1}
