"""Open Inference Protocol (KServe "v2" REST) tensors: read an infer request, write its response.

The protocol is what Triton, KServe, Seldon MLServer and OpenVINO Model Server speak, so their
clients (`tritonclient.http` above all) work unchanged. Tensor data comes either as JSON (a flat
or nested row-major list, as the spec says) or through Triton's binary tensor extension, which
`tritonclient` uses by default: the body is the JSON header followed by the raw little-endian
tensors, and `Inference-Header-Content-Length` says where the JSON ends. Nothing here knows about
the model or about routing; every problem with a request is a `BadInferenceRequest` (400).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from app import tracing
from app.errors import BadInferenceRequest as ProtocolError

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_EXTENSION = "binary_tensor_data"

# Datatypes this service reads and writes; the protocol has more, all refused with a clear 400.
NUMPY_DTYPES: dict[str, np.dtype] = {"FP32": np.dtype("<f4")}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the metadata endpoint describes it; -1 marks the batch axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None  # None: every output, in `binary_default`
    binary_default: bool


@tracing.traced("upload.decode")
def parse_infer_request(
    body: bytes, header_length: str | None, input_specs: list[TensorSpec]
) -> InferRequest:
    """Parses and checks the whole request against `input_specs` (names, datatypes, shapes)."""
    json_part, binary_part = _split_body(body, header_length)
    try:
        request = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ProtocolError("the request must be a JSON object")
    parameters = _object(request.get("parameters", {}), "parameters")
    if "classification" in parameters:
        raise ProtocolError("the classification extension is not supported")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")

    specs = {spec.name: spec for spec in input_specs}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for raw in raw_inputs:
        tensor = _object(raw, "each input")
        name = tensor.get("name")
        if name not in specs:
            expected = ", ".join(repr(n) for n in specs)
            raise ProtocolError(f"unknown input {name!r}; this model takes {expected}")
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given twice")
        array, offset = _read_tensor(tensor, specs[name], binary_part, offset)
        inputs[name] = array
    missing = [n for n in specs if n not in inputs]
    if missing:
        raise ProtocolError(f"missing input {missing[0]!r}")
    if offset != len(binary_part):
        raise ProtocolError(
            f"{len(binary_part) - offset} bytes of binary data after the last binary input"
        )
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    binary_default = _flag(parameters, "binary_data_output", "parameters")
    return InferRequest(request_id, inputs, _requested_outputs(request), binary_default)


def select_outputs(
    request: InferRequest, output_specs: list[TensorSpec]
) -> list[tuple[TensorSpec, bool]]:
    """The outputs to return, in order, each with whether it goes as binary data."""
    specs = {spec.name: spec for spec in output_specs}
    if request.outputs is None:
        return [(spec, request.binary_default) for spec in output_specs]
    chosen = []
    for wanted in request.outputs:
        if wanted.name not in specs:
            expected = ", ".join(repr(n) for n in specs)
            raise ProtocolError(f"unknown output {wanted.name!r}; this model gives {expected}")
        chosen.append((specs[wanted.name], wanted.binary))
    return chosen


@tracing.traced("response.encode")
def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[TensorSpec, bool, np.ndarray]],
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: plain JSON, or JSON + binary tensors when asked for."""
    tensors, blobs = [], []
    for spec, binary, array in outputs:
        data = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[spec.datatype])
        tensor: dict[str, Any] = {
            "name": spec.name,
            "datatype": spec.datatype,
            "shape": list(data.shape),
        }
        if binary:
            blob = data.tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = data.ravel().tolist()
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = tensors
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *blobs]), headers


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer") from None
    if not 0 < length <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {length} does not fit a {len(body)}-byte body")
    return body[:length], body[length:]


def _read_tensor(
    tensor: dict[str, Any], spec: TensorSpec, binary_part: bytes, offset: int
) -> tuple[np.ndarray, int]:
    """One input as a float32 array of its declared shape; checks it against `spec`."""
    name = spec.name
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        raise ProtocolError(f"input {name!r} has datatype {datatype!r}; expected {spec.datatype}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(shape) != len(spec.shape) or any(
        want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True)
    ):
        raise ProtocolError(f"input {name!r} has shape {shape}; expected {list(spec.shape)}")
    count = math.prod(shape)
    dtype = NUMPY_DTYPES[spec.datatype]
    parameters = _object(tensor.get("parameters", {}), f"input {name!r} parameters")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise ProtocolError(f"input {name!r} has both 'data' and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size != count * dtype.itemsize:
            raise ProtocolError(
                f"input {name!r}: binary_data_size {size!r} is not "
                f"{count} x {dtype.itemsize} bytes for shape {shape}"
            )
        if offset + size > len(binary_part):
            raise ProtocolError(f"input {name!r}: the binary data ends early")
        flat = np.frombuffer(binary_part, dtype=dtype, count=count, offset=offset)
        offset += size
    else:
        flat = _json_numbers(tensor.get("data"), name, count)
    if not np.isfinite(flat).all():
        raise ProtocolError(f"input {name!r} holds NaN or infinite values")
    return flat.astype(np.float32).reshape(shape), offset


def _json_numbers(data: Any, name: str, count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r} needs 'data' (a list) or binary data")
    try:
        array = np.asarray(data)
    except ValueError:  # ragged nesting
        raise ProtocolError(f"input {name!r}: 'data' is not a regular array") from None
    if array.dtype.kind not in "iuf":  # strings, booleans, objects, mixed types
        raise ProtocolError(f"input {name!r}: 'data' must hold only numbers")
    if array.size != count:
        raise ProtocolError(f"input {name!r} has {array.size} values; its shape needs {count}")
    return array.ravel()


def _requested_outputs(request: dict[str, Any]) -> list[RequestedOutput] | None:
    raw_outputs = request.get("outputs")
    if raw_outputs is None:
        return None
    if not isinstance(raw_outputs, list):
        raise ProtocolError("'outputs' must be a list")
    default = _flag(_object(request.get("parameters", {}), "parameters"), "binary_data_output")
    requested = []
    for raw in raw_outputs:
        output = _object(raw, "each output")
        name = output.get("name")
        if not isinstance(name, str):
            raise ProtocolError("each output needs a 'name'")
        parameters = _object(output.get("parameters", {}), f"output {name!r} parameters")
        if "classification" in parameters:
            raise ProtocolError("the classification extension is not supported")
        binary = _flag(parameters, "binary_data", f"output {name!r}", default)
        requested.append(RequestedOutput(name, binary))
    return requested


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _flag(parameters: dict[str, Any], key: str, where: str = "", default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"{where or 'parameters'}: {key!r} must be true or false")
    return value
