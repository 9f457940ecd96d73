"""An ONNX file read as the protobuf it is, without onnx: its fields, and the tensors it keeps
outside itself.

An ONNX tensor may hold its bytes in another file (``data_location: EXTERNAL``, a ``location``
relative to the model's folder). ONNX Runtime and OpenVINO read such a file when they load the
graph, and the manifest's sha256 covers only the ``.onnx`` file: weights swapped in a file
beside it would run unchecked. edgeseg's exports keep every tensor in the graph, so the runtime
refuses a graph that names an external file (:func:`check_self_contained`).
"""

from __future__ import annotations

from pathlib import Path

from edgeseg.errors import BundleError

# The message fields (onnx.proto) through which a TensorProto can be reached, per message type:
# field number -> the type of the message it holds.
_MESSAGES = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_TENSOR_NAME, _EXTERNAL_DATA, _DATA_LOCATION = 8, 13, 14  # TensorProto
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def varint(data: memoryview, pos: int) -> tuple[int, int]:
    """(the varint at ``pos``, the position after it); ValueError for a truncated one."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("a truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


MAX_FIELD = (1 << 29) - 1  # protobuf's largest field number; 0 is none


def _field(data: memoryview, pos: int) -> tuple[int, int, object, int]:
    """(number, wire type, value, the position after it) of the field at ``pos``: a varint as int,
    a fixed-width value as bytes, a length-delimited one as a view, a group's start or end as None."""
    key, pos = varint(data, pos)
    number, wire = key >> 3, key & 7
    if not 1 <= number <= MAX_FIELD:
        raise ValueError(f"field number {number}, beyond protobuf's 1..{MAX_FIELD}")
    value = None
    if wire == 0:
        value, pos = varint(data, pos)
    elif wire in (1, 5):
        width = 8 if wire == 1 else 4
        value, pos = bytes(data[pos:pos + width]), pos + width
    elif wire == 2:
        length, pos = varint(data, pos)
        value, pos = data[pos:pos + length], pos + length
    elif wire not in (3, 4):
        raise ValueError(f"wire type {wire} in field {number}")
    if pos > len(data):
        raise ValueError(f"field {number} runs past the end of the file")
    return number, wire, value, pos


def fields(data: memoryview):
    """(field number, value) of each field of a protobuf message; only length-delimited values are
    views (memoryview), so that a field of another wire type is never read as a message. A group
    (wire types 3 to 4) is skipped whole, as protobuf skips one where the message declares no such
    field: ONNX Runtime and OpenVINO load a graph that holds one."""
    pos = 0
    while pos < len(data):
        number, wire, value, pos = _field(data, pos)
        if wire == 4:
            raise ValueError(f"the end of a group {number} that no group opened")
        if wire == 3:
            pos = _skip_group(data, pos, number)
        else:
            yield number, value


def _skip_group(data: memoryview, pos: int, number: int) -> int:
    opened = [number]  # not recursive, as external_tensor
    while opened:
        inner, wire, _, pos = _field(data, pos)
        if wire == 3:
            opened.append(inner)
        elif wire == 4 and inner != opened.pop():
            raise ValueError(f"a group {inner} ends where group {number} is open")
    return pos


def external_tensor(path: str | Path) -> tuple[str, str] | None:
    """(tensor name, the file it names) of the first tensor of the ONNX model at ``path`` whose
    bytes lie in another file (initializers, Constant attributes, sparse tensors, subgraphs and
    functions included), or None when every tensor is in the graph; ValueError for a file that is
    not a protobuf message."""
    stack = [("model", memoryview(Path(path).read_bytes()))]
    while stack:  # not recursive: subgraphs may nest deeper than Python recurses
        kind, data = stack.pop()
        if kind == "tensor":
            found = _external(data)
            if found is not None:
                return found
            continue
        inner = _MESSAGES[kind]
        # reversed: the stack pops them in the file's order, so "first" is the file's first
        stack += reversed([(inner[n], v) for n, v in fields(data) if n in inner and isinstance(v, memoryview)])
    return None


def _external(tensor: memoryview) -> tuple[str, str] | None:
    name, location, external = "", "", False
    for number, value in fields(tensor):
        if number == _TENSOR_NAME and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", "replace")
        elif number == _DATA_LOCATION and value == _EXTERNAL:
            external = True
        elif number == _EXTERNAL_DATA and isinstance(value, memoryview):
            external = True
            entry = dict((n, bytes(v).decode("utf-8", "replace")) for n, v in fields(value)
                         if n in (1, 2) and isinstance(v, memoryview))
            location = entry.get(2, location) if entry.get(1) == "location" else location
    return (name, location or "?") if external else None


def check_self_contained(path: Path, what: str) -> None:
    """BundleError naming ``what`` when the ONNX model at ``path`` keeps a tensor in another file.
    A file that is no protobuf is left to the engine, whose error says so."""
    try:
        found = external_tensor(path)
    except ValueError:
        return
    if found is not None:
        raise BundleError(f"{what} keeps tensor {found[0][:80]!r} in another file ({found[1][:80]!r}), which the "
                          "manifest's sha256 does not cover; edgeseg bundles hold every tensor in the graph")
