"""KServe v2 / Open Inference Protocol tensors: JSON and the binary tensor data extension.

A request body is JSON, or JSON followed by raw tensor bytes when the
``Inference-Header-Content-Length`` header gives the JSON's length; an input whose
``parameters.binary_data_size`` is set takes its bytes from that tail, in input order.
Outputs are returned as binary when the request asks for it for all
(``parameters.binary_data_output``) unless an output says otherwise (its own
``parameters.binary_data``, which overrides it either way). Parameters of the wrong JSON type
(``"false"`` for a boolean) and the extensions this server does not implement
(``shared_memory_region``, ``classification``) are refused, not coerced or ignored; so are JSON
data of the wrong kind (strings, or fractions for an integer tensor) and duplicate names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

HEADER_LENGTH = "inference-header-content-length"
MAX_RANK = 8

DATATYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
NUMPY_TO_DATATYPE = {np.dtype(v): k for k, v in DATATYPES.items()}


class ProtocolError(ValueError):
    """A malformed inference request; the server answers 400 with this message."""


@dataclass
class InferRequest:
    """A decoded request: its id, input arrays by name, and which outputs to send as binary
    (``binary_outputs``: what each output asked for itself; the others follow ``binary_all``)."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    binary_outputs: dict[str, bool]
    binary_all: bool

    def binary(self, name: str) -> bool:
        """Whether output ``name`` is sent as binary: its own ``binary_data`` overrides the
        request's ``binary_data_output``."""
        return self.binary_outputs.get(name, self.binary_all)


def _json_part(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    if header_length is None:
        text, tail = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if not 0 <= n <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes")
        text, tail = body[:n], body[n:]
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # '[[[[...' nests deeper than the parser recurses
        raise ProtocolError("request body is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise ProtocolError("request body must be a JSON object")
    return doc, tail


def _shape(entry: dict, name: str, body_bytes: int) -> tuple[int, ...]:
    """The declared shape, refused unless the body could carry that many elements: every value
    takes at least one byte (binary) or one character (JSON), so a larger count is a lie that
    must not reach numpy (whose int64 element count would overflow) or an allocation."""
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ProtocolError(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}"[:300])
    if len(shape) > MAX_RANK:
        raise ProtocolError(f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_RANK} are accepted")
    count = math.prod(shape)  # a Python int: exact, where numpy's int64 product would wrap around
    if count > body_bytes or max(shape, default=0) > max(body_bytes, 1):
        raise ProtocolError(f"input {name!r}: shape {shape} holds {count} elements, more than a request body "
                            f"of {body_bytes} bytes can carry"[:300])
    return tuple(shape)


def _declared_count(entry: dict) -> int:
    """The element count of a well-formed shape (0 otherwise), for the binary size check."""
    shape = entry.get("shape")
    if isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        return math.prod(shape) if len(shape) <= MAX_RANK else 0
    return 0


def _dtype(entry: dict, name: str) -> np.dtype:
    datatype = entry.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ProtocolError(f"input {name!r}: datatype {datatype!r} is not one of {sorted(DATATYPES)}")
    return np.dtype(DATATYPES[datatype]).newbyteorder("<")


def _parameters(holder: dict, what: str) -> dict:
    """``holder``'s parameters (an object), refusing the shared memory extension."""
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{what}: 'parameters' must be an object, got {params!r}"[:300])
    if "shared_memory_region" in params:
        raise ProtocolError(f"{what}: the shared memory extension (shared_memory_region) is not supported; "
                            "send the tensor in the request body")
    return params


def _flag(params: dict, key: str, what: str) -> bool | None:
    """A boolean parameter (None where absent); ``"false"`` or ``0`` is refused, never coerced."""
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise ProtocolError(f"{what}: parameter {key!r} must be true or false, got {value!r}"[:300])
    return value


def _holds_bool(data) -> bool:
    """Whether nested JSON ``data`` holds a boolean anywhere: numpy takes ``[true, 2]`` as the
    integers ``[1, 2]``, so a mix is only seen in the parsed lists themselves."""
    pending = [data]
    while pending:
        values = pending.pop()
        if values.__class__ is bool:
            return True
        if values.__class__ is list:
            if any(v.__class__ is bool for v in values):
                return True
            pending.extend(v for v in values if v.__class__ is list)
    return False


def _json_data(data, dtype: np.dtype, datatype: str, name: str) -> np.ndarray:
    """JSON ``data`` (flat or nested) as ``dtype``, refusing values of another kind (strings,
    booleans for numbers, fractions for integers) and values out of the type's range instead
    of converting them."""
    refused = ProtocolError(f"input {name!r}: data is not a list of {datatype} values")
    try:
        raw = np.asarray(data)
    except (TypeError, ValueError, OverflowError):  # ragged nesting
        raise refused from None
    if raw.size == 0:
        return raw.astype(dtype)
    kind = raw.dtype.kind
    if kind in "USO":
        kinds = "strings" if kind in "US" else "values that are not numbers"
        raise ProtocolError(f"input {name!r}: data holds {kinds}, not {datatype} values")
    wanted = "b" if dtype.kind == "b" else "iu" if dtype.kind in "iu" else "iuf"
    if kind not in wanted:
        kinds = {"b": "booleans", "f": "fractions"}.get(kind, str(raw.dtype))
        raise ProtocolError(f"input {name!r}: data holds {kinds}, not {datatype} values")
    if kind != "b" and _holds_bool(data):
        raise ProtocolError(f"input {name!r}: data holds booleans among numbers, not {datatype} values")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise ProtocolError(f"input {name!r}: a value lies outside the range of {datatype} "
                                f"({info.min}..{info.max})")
        return raw.astype(dtype)
    with np.errstate(over="ignore"):  # an overflow is refused just below
        array = raw.astype(dtype)
    if dtype.kind == "f" and np.any(np.isinf(array) & np.isfinite(raw)):
        raise ProtocolError(f"input {name!r}: a value lies outside the range of {datatype}")
    return array


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request body into arrays; ProtocolError for anything malformed."""
    doc, tail = _json_part(body, header_length)
    entries = doc.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError("request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError("each input needs a 'name'")
        name = entry["name"]
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given twice")
        dtype = _dtype(entry, name)
        size = _parameters(entry, f"input {name!r}").get("binary_data_size")
        if isinstance(size, bool):
            raise ProtocolError(f"input {name!r}: binary_data_size must be a number of bytes, got {size!r}")
        # binary: the declared size is checked against the shape first (the clearer message)
        shape = _shape(entry, name, len(body) if size is None else max(len(body), _declared_count(entry)))
        count = math.prod(shape)
        if size is not None:
            if not isinstance(size, int) or size != count * dtype.itemsize:
                raise ProtocolError(f"input {name!r}: binary_data_size {size!r} does not match shape {list(shape)} "
                                    f"of {entry['datatype']} ({count * dtype.itemsize} bytes)")
            if offset + size > len(tail):
                raise ProtocolError(f"input {name!r}: body holds {len(tail) - offset} binary bytes, {size} needed")
            array = np.frombuffer(tail, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += size
        else:
            data = entry.get("data")
            if data is None:
                raise ProtocolError(f"input {name!r} has neither 'data' nor binary_data_size")
            array = _json_data(data, dtype, entry["datatype"], name)
            if array.size != count:
                raise ProtocolError(f"input {name!r}: {array.size} values do not fill shape {list(shape)}")
            array = array.reshape(shape)
        inputs[name] = array.astype(dtype.newbyteorder("="), copy=False)
    if offset != len(tail):
        raise ProtocolError(f"body has {len(tail) - offset} binary bytes that no input claims")
    wanted = doc.get("outputs")
    names, binary = None, {}
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
            raise ProtocolError("'outputs' must be a list of objects with a 'name'")
        names = [o["name"] for o in wanted]
        for output in wanted:
            what = f"output {output['name']!r}"
            if output["name"] in binary:
                raise ProtocolError(f"{what} is asked for twice")
            params = _parameters(output, what)
            if "classification" in params:
                raise ProtocolError(f"{what}: the classification extension is not supported; ask for the tensor")
            binary[output["name"]] = _flag(params, "binary_data", what)
        binary = {name: flag for name, flag in binary.items() if flag is not None}
    binary_all = bool(_flag(_parameters(doc, "request"), "binary_data_output", "request"))
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        # echoed as sent: a number or object turned into text would not be the id the client gave
        raise ProtocolError(f"request 'id' must be a string, got {json.dumps(request_id)}"[:300])
    return InferRequest(id=request_id, inputs=inputs, outputs=names,
                        binary_outputs=binary, binary_all=binary_all)


def encode_response(model: str, version: str, request: InferRequest, outputs: dict[str, np.ndarray],
                    parameters: dict | None = None) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for ``outputs`` (binary where the request asked), with
    response-level ``parameters`` (strings, numbers or booleans) when given."""
    doc: dict = {"model_name": model, "model_version": version, "outputs": []}
    if request.id is not None:
        doc["id"] = request.id
    if parameters:
        doc["parameters"] = parameters
    blobs: list[bytes] = []
    for name, array in outputs.items():
        array = np.ascontiguousarray(array)
        entry = {"name": name, "datatype": NUMPY_TO_DATATYPE[array.dtype], "shape": list(array.shape)}
        if request.binary(name):
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        doc["outputs"].append(entry)
    text = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return text, {"content-type": "application/json"}
    return text + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(text))}
