"""KServe v2 gRPC tensors: a ``ModelInferRequest`` as the decoded request the HTTP side makes of
its JSON (``edgeseg.serve.protocol.InferRequest``), and outputs as a ``ModelInferResponse``.

Each input's values come in ``raw_input_contents`` (what ``tritonclient.grpc`` and perf_analyzer
send: one little-endian blob per input, in input order, for all inputs or none) or in the typed
``contents`` field of its datatype. The checks are the HTTP side's: a known datatype, a shape of
at most MAX_RANK non-negative dimensions, exactly the bytes (or values) that shape needs, no
duplicate names, no shared memory, no classification. Outputs are always sent raw.
"""

from __future__ import annotations

import math

import numpy as np

from edgeseg.serve.protocol import DATATYPES, MAX_RANK, NUMPY_TO_DATATYPE, InferRequest, ProtocolError

# The typed contents field that carries each datatype (FP16 has none: raw only)
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                  "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                  "FP64": "fp64_contents"}
_ALL_FIELDS = sorted(set(CONTENTS_FIELD.values()) | {"bytes_contents"})
# The type each contents field holds its values in (the protobuf wire type)
_FIELD_DTYPE = {"bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
                "uint_contents": np.uint32, "uint64_contents": np.uint64, "fp32_contents": np.float32,
                "fp64_contents": np.float64}


def _refuse_extensions(parameters, what: str, *keys: str) -> None:
    for key in keys:
        if key in parameters:
            name = key if key != "classification" else "classification extension"
            raise ProtocolError(f"{what}: {name} is not supported; send the tensor in the request")


def _shape(tensor, name: str) -> tuple[int, ...]:
    shape = tuple(int(n) for n in tensor.shape)
    if len(shape) > MAX_RANK:
        raise ProtocolError(f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_RANK} are accepted")
    if any(n < 0 for n in shape):
        raise ProtocolError(f"input {name!r}: shape must be non-negative integers, got {list(shape)}"[:300])
    return shape


def _raw_array(raw: bytes, shape: tuple[int, ...], datatype: str, name: str) -> np.ndarray:
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    needed = math.prod(shape) * dtype.itemsize  # a Python int: no overflow for a lying shape
    if len(raw) != needed:
        raise ProtocolError(f"input {name!r}: raw_input_contents holds {len(raw)} bytes; shape {list(shape)} "
                            f"of {datatype} needs {needed}"[:300])
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _typed_array(tensor, shape: tuple[int, ...], datatype: str, name: str) -> np.ndarray:
    """The values of the typed contents field of ``datatype``, read straight into a numpy array of
    the field's type (never a Python list of them), range-checked, as ``datatype``."""
    field = CONTENTS_FIELD.get(datatype)
    given = [f for f in _ALL_FIELDS if len(getattr(tensor.contents, f))]
    if field is None or given != [field]:
        where = f"in {field}" if field else "in raw_input_contents (it has no typed contents field)"
        raise ProtocolError(f"input {name!r}: {datatype} values go {where}, got {given or 'none'}")
    values = getattr(tensor.contents, field)
    if len(values) != math.prod(shape):
        raise ProtocolError(f"input {name!r}: {len(values)} values do not fill shape {list(shape)}"[:300])
    array = np.fromiter(values, dtype=_FIELD_DTYPE[field], count=len(values))
    dtype = np.dtype(DATATYPES[datatype])
    if dtype.kind in "iu" and array.size and dtype != array.dtype:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise ProtocolError(f"input {name!r}: a value lies outside the range of {datatype} "
                                f"({info.min}..{info.max})")
    return array.astype(dtype, copy=False).reshape(shape)


def _typed_given(request) -> bool:
    return any(len(getattr(tensor.contents, f)) for tensor in request.inputs for f in _ALL_FIELDS)


def decode_infer_request(request, check_declared=None) -> InferRequest:
    """The tensors of a ``ModelInferRequest``; ProtocolError (one line) for anything malformed.
    ``check_declared(name, shape, datatype)``, given, is called for each input in typed contents
    before its values are decoded, to refuse what the declared shape alone breaks."""
    if not request.inputs:
        raise ProtocolError("request needs at least one input")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs; "
                            "send every input raw, or none")
    if raw and _typed_given(request):
        raise ProtocolError("the request holds both raw_input_contents and typed contents; send each input "
                            "in one of them")
    _refuse_extensions(request.parameters, "request", "shared_memory_region")
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise ProtocolError("each input needs a 'name'")
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given twice")
        if tensor.datatype not in DATATYPES:
            raise ProtocolError(f"input {name!r}: datatype {tensor.datatype!r} is not one of {sorted(DATATYPES)}"[:300])
        _refuse_extensions(tensor.parameters, f"input {name!r}", "shared_memory_region")
        shape = _shape(tensor, name)
        if raw:
            array = _raw_array(raw[index], shape, tensor.datatype, name)
        else:
            if check_declared is not None:
                check_declared(name, shape, tensor.datatype)
            array = _typed_array(tensor, shape, tensor.datatype, name)
        inputs[name] = array.astype(array.dtype.newbyteorder("="), copy=False)
    names = [output.name for output in request.outputs] if request.outputs else None
    for output in request.outputs:
        if names.count(output.name) > 1:
            raise ProtocolError(f"output {output.name!r} is asked for twice")
        _refuse_extensions(output.parameters, f"output {output.name!r}", "classification", "shared_memory_region")
    return InferRequest(id=request.id or None, inputs=inputs, outputs=names, binary_outputs={}, binary_all=True)


def parameter_message(value, message):
    """``value`` (text, boolean, whole number or fraction) set in ``message``, an ``InferParameter``."""
    if isinstance(value, str):
        message.string_param = value
    elif isinstance(value, bool):
        message.bool_param = value
    elif isinstance(value, int):
        message.int64_param = value
    else:
        message.double_param = float(value)
    return message


def encode_infer_response(pb, model: str, request: InferRequest, outputs: dict[str, np.ndarray],
                          parameters: dict | None = None):
    """A ``ModelInferResponse`` (of the generated module ``pb``) carrying ``outputs`` raw, with
    the response ``parameters``."""
    response = pb.ModelInferResponse(model_name=model, model_version="1", id=request.id or "")
    for key, value in (parameters or {}).items():
        parameter_message(value, response.parameters[key])
    for name, array in outputs.items():
        array = np.ascontiguousarray(array)
        response.outputs.add(name=name, datatype=NUMPY_TO_DATATYPE[array.dtype], shape=list(array.shape))
        response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return response
