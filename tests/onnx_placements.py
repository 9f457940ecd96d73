"""Small ONNX models that each keep one tensor (or two) in another file, one for every place a
TensorProto can sit in onnx.proto, built with onnx's own helpers: what both runtimes must refuse.
Each entry of :func:`placements` is (serialised model, (name, location) of the first external
tensor in the file's order)."""

from __future__ import annotations

import numpy as np

LOCATION = "../elsewhere.bin"


def varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def key(number: int, wire: int) -> bytes:
    """A protobuf field key."""
    return varint((number << 3) | wire)


def group(number: int, inner: bytes = b"") -> bytes:
    """An unknown group field (wire types 3 and 4), which protobuf parsers skip."""
    return key(number, 3) + inner + key(number, 4)


def externalise(tensor, location: str = LOCATION, *, entries: bool = True, flag: bool = True) -> None:
    """Move ``tensor``'s bytes out of the graph as onnx.external_data_helper does: the
    ``data_location`` flag (``flag``) and ``location``/``offset``/``length`` entries (``entries``)."""
    from onnx import TensorProto

    for name in ("raw_data", "float_data", "int64_data", "int32_data"):
        tensor.ClearField(name)
    if flag:
        tensor.data_location = TensorProto.EXTERNAL
    if entries:
        for k, v in (("location", location), ("offset", "0"), ("length", "16")):
            entry = tensor.external_data.add()
            entry.key, entry.value = k, v


def placements() -> dict[str, tuple[bytes, tuple[str, str]]]:
    from onnx import TensorProto, helper, numpy_helper

    def weight(name="w"):
        return numpy_helper.from_array(np.ones((2, 2), np.float32), name)

    def sparse(name="s"):
        return helper.make_sparse_tensor(numpy_helper.from_array(np.ones(2, np.float32), name),
                                         numpy_helper.from_array(np.array([0, 3], np.int64), name + "_i"), [2, 2])

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    add = helper.make_node("Add", ["x", "w"], ["y"])
    opset = [helper.make_opsetid("", 17)]

    def model(graph, **kwargs):
        return helper.make_model(graph, opset_imports=opset, **kwargs)

    out: dict[str, tuple[bytes, tuple[str, str]]] = {}

    def keep(case, m, tensor, name=None, location=LOCATION, **options):
        externalise(tensor, location, **options)
        out[case] = (m.SerializeToString(), (name or tensor.name, location if options.get("entries", True) else "?"))

    m = model(helper.make_graph([add], "g", [x], [y], initializer=[weight()]))
    keep("initializer", m, m.graph.initializer[0])
    m = model(helper.make_graph([helper.make_node("Constant", [], ["w"], value=weight()), add], "g", [x], [y]))
    keep("constant-value", m, m.graph.node[0].attribute[0].t)
    branch = helper.make_graph([add], "b", [], [y], initializer=[weight()])
    cond = numpy_helper.from_array(np.array(True), "c")
    m = model(helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                                "g", [x], [y], initializer=[cond]))
    keep("if-else-branch", m, m.graph.node[0].attribute[1].g.initializer[0])
    m = model(helper.make_graph([add], "g", [x], [y], sparse_initializer=[sparse("w")]))
    keep("sparse-initializer-values", m, m.graph.sparse_initializer[0].values)
    m = model(helper.make_graph([add], "g", [x], [y], sparse_initializer=[sparse("w")]))
    keep("sparse-initializer-indices", m, m.graph.sparse_initializer[0].indices)
    m = model(helper.make_graph([helper.make_node("Constant", [], ["w"], sparse_value=sparse()), add], "g", [x], [y]))
    keep("constant-sparse-value", m, m.graph.node[0].attribute[0].sparse_tensor.values)
    custom = helper.make_node("Custom", ["x"], ["y"], domain="test", tensors=[weight("t0"), weight("t1")],
                              sparses=[sparse("p")], graphs=[branch])
    m = model(helper.make_graph([custom], "g", [x], [y]))
    keep("attribute-tensors", m, next(a for a in m.graph.node[0].attribute if a.name == "tensors").tensors[1])
    m = model(helper.make_graph([custom], "g", [x], [y]))
    keep("attribute-sparse-tensors", m, next(a for a in m.graph.node[0].attribute if a.name == "sparses").sparse_tensors[0].values)
    m = model(helper.make_graph([custom], "g", [x], [y]))
    keep("attribute-graphs", m, next(a for a in m.graph.node[0].attribute if a.name == "graphs").graphs[0].initializer[0])
    function = helper.make_function("test", "F", ["x"], ["y"], [helper.make_node("Constant", [], ["w"], value=weight()),
                                                                 add], opset)
    m = model(helper.make_graph([helper.make_node("F", ["x"], ["y"], domain="test")], "g", [x], [y]),
              functions=[function])
    keep("function", m, m.functions[0].node[0].attribute[0].t)
    for field in ("initialization", "algorithm"):
        m = model(helper.make_graph([add], "g", [x], [y], initializer=[weight()]))
        info = m.training_info.add()
        getattr(info, field).CopyFrom(helper.make_graph([add], "t", [x], [y], initializer=[weight("tw")]))
        keep(f"training-{field}", m, getattr(m.training_info[0], field).initializer[0])
    m = model(helper.make_graph([add], "g", [x], [y], initializer=[weight()]))
    keep("flag-without-entries", m, m.graph.initializer[0], entries=False)
    m = model(helper.make_graph([add], "g", [x], [y], initializer=[weight()]))
    keep("entries-without-flag", m, m.graph.initializer[0], flag=False)
    m = model(helper.make_graph([add], "g", [x], [y], initializer=[weight("it's \"ok\"\n\u00e9\u2028\\")]))
    keep("odd-names", m, m.graph.initializer[0], location="dir/we'ights\t\u00a0\u00e9.bin")
    m = model(helper.make_graph([add], "g", [x], [y], initializer=[weight("a" * 200)]))
    keep("long-names", m, m.graph.initializer[0], location="b" * 200)
    # two external tensors: the first in the file's order is the one named
    m = model(helper.make_graph([helper.make_node("Constant", [], ["w"], value=weight("first")), add], "g", [x], [y],
                                initializer=[weight("second")]))
    externalise(m.graph.initializer[0], "second.bin")
    keep("two-tensors", m, m.graph.node[0].attribute[0].t)
    # an unknown group (which ONNX Runtime and OpenVINO skip) before it, in the model and in the graph
    m = model(helper.make_graph([add], "g", [x], [y], initializer=[weight()]))
    externalise(m.graph.initializer[0])
    graph = m.graph.SerializeToString() + group(100, key(1, 0) + b"\x05" + group(101))
    m.ClearField("graph")
    out["behind-groups"] = (group(99) + m.SerializeToString() + key(7, 2) + varint(len(graph)) + graph,
                            ("w", LOCATION))
    return out

