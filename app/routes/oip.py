"""Open Inference Protocol (KServe v2 REST) routes, beside the service's own, on the same batchers.

Two models come out of one checkpoint: `<dataset>-vae-decoder` (`z` -> `image`) and
`<dataset>-vae-encoder` (`image` -> `mu`, `logvar`, and `typicality` where the checkpoint is
calibrated for it), both versioned by the checkpoint's sha256
prefix, so a reload shows up as a new version. Inference goes through `Engine.decode` and
`Engine.encode`, the micro-batchers that `/decode` and `/encode` use, so requests of both APIs
share batches. Errors are `{"error": "..."}` as the protocol says (`app.http.error_bodies`).

An infer request's body is read under the request deadline and refused (413) as soon as it is
larger than a full batch of that model could need. Small bodies and answers are parsed and
written on the event loop (cheaper than a thread hop); big ones on one worker thread, inside the
deadline, so a large or hostile body never holds the event loop for long.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Request, Response

from app import deadline
from app.errors import BadInferenceRequest, NotFound, PayloadTooLarge
from app.http.error_bodies import PROTOCOL_PREFIX
from app.inference.engine import Engine
from app.inference.served import LoadedModel
from app.routes.deps import EngineDep, ModelDep, engine_of, settings_of
from app.routes.direct import add_direct_route
from app.routes.oip_codec import (
    BINARY_EXTENSION,
    HEADER_LENGTH,
    INFER_REQUEST_SCHEMA,
    INLINE_BODY_BYTES,
    INLINE_OUTPUT_VALUES,
    TensorSpec,
    encode_infer_response,
    max_json_body_bytes,
    output_values,
    parse_infer_request,
    select_outputs,
)
from app.routes.openapi import OpenApiResponses, errors
from app.schemas import MAX_SAMPLES

T = TypeVar("T")

PREFIX = PROTOCOL_PREFIX  # the error shape follows the prefix
SERVER_NAME = "mnist-vae"
SERVER_VERSION = "0.1.0"
PLATFORMS = {"torch-checkpoint": "pytorch", "onnx-export": "onnxruntime_onnx"}
IMAGE_SHAPE = (-1, 1, 32, 32)
IMAGE_INPUT = TensorSpec("image", "FP32", IMAGE_SHAPE)
# The largest /v2 body: a full batch of images as JSON (the encoder's input, the largest there is
# while the latent is under 1,024 wide). `app.main` gives it to the one body-size check.
MAX_BODY_BYTES = max_json_body_bytes([IMAGE_INPUT], MAX_SAMPLES)

Run = Callable[[Engine, LoadedModel, dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]

health_router = APIRouter(prefix=PREFIX, tags=["open inference protocol"])
router = APIRouter(prefix=PREFIX, tags=["open inference protocol"])

MODEL_ERRORS = errors(404, 422, protocol=True)  # 422: a parameter that does not validate
NO_BODY: OpenApiResponses = {200: {"description": "yes (no body)", "content": {}}}
INFER_RESPONSES: OpenApiResponses = {
    200: {
        "description": "the outputs: JSON, or with the binary extension a JSON header "
        f"({HEADER_LENGTH} bytes long) followed by the raw tensors",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    **errors(400, 404, 413, 422, protocol=True),
}
INFER_BODY = {
    "parameters": [
        {
            "name": HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "with the binary tensor extension: the length of the JSON part",
            "schema": {"type": "string"},
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": INFER_REQUEST_SCHEMA},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": f"the JSON request ({HEADER_LENGTH} bytes), then the tensors",
                }
            },
        },
    },
}


@dataclass(frozen=True)
class ProtocolModel:
    """One model as the protocol sees it: its name, version, tensors and how to run a batch."""

    name: str
    version: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    run: Run
    platform: str

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [spec.metadata() for spec in self.inputs],
            "outputs": [spec.metadata() for spec in self.outputs],
        }


async def _decode(engine: Engine, m: LoadedModel, inputs: dict[str, np.ndarray]):
    return {"image": await engine.decode(m, inputs["z"])}


async def _encode(engine: Engine, m: LoadedModel, inputs: dict[str, np.ndarray]):
    mu, logvar, typicality = await engine.encode_scored(m, inputs["image"])
    if typicality is None:
        return {"mu": mu, "logvar": logvar}
    return {"mu": mu, "logvar": logvar, "typicality": typicality.astype(np.float32)}


def protocol_models(m: LoadedModel) -> dict[str, ProtocolModel]:
    """The decoder and the encoder of the served checkpoint, named after its dataset."""
    dataset = (m.metadata.get("dataset") or {}).get("name") or "mnist"
    version = m.sha256[:12]
    latent = (-1, m.latent_dim)
    decoder = ProtocolModel(
        f"{dataset}-vae-decoder",
        version,
        [TensorSpec("z", "FP32", latent)],
        [TensorSpec("image", "FP32", IMAGE_SHAPE)],
        _decode,
        PLATFORMS.get(m.artifact.kind, "pytorch"),
    )
    # `typicality` [N] (models.typicality) where the checkpoint is calibrated for it
    scored = [TensorSpec("typicality", "FP32", (-1,))] if m.typicality is not None else []
    encoder = ProtocolModel(
        f"{dataset}-vae-encoder",
        version,
        [TensorSpec("image", "FP32", IMAGE_SHAPE)],
        [TensorSpec("mu", "FP32", latent), TensorSpec("logvar", "FP32", latent), *scored],
        _encode,
        PLATFORMS.get(m.artifact.kind, "pytorch"),
    )
    return {decoder.name: decoder, encoder.name: encoder}


def find_model(m: LoadedModel, name: str, version: str | None = None) -> ProtocolModel:
    models = protocol_models(m)
    if name not in models:
        raise NotFound(f"unknown model {name!r}; this server has {', '.join(sorted(models))}")
    model = models[name]
    if version is not None and version != model.version:
        raise NotFound(f"model {name!r} has no version {version!r}; it has {model.version!r}")
    return model


@health_router.get("/health/live", response_class=Response, responses=NO_BODY)
async def server_live() -> Response:
    """200 while the process answers (the protocol's liveness; no body)."""
    return Response(status_code=200)


@health_router.get(
    "/health/ready",
    response_class=Response,
    responses={**NO_BODY, 503: {"description": "not ready (no body)", "content": {}}},
)
async def server_ready(engine: EngineDep, request: Request) -> Response:
    """200 once the model is loaded and warmed, 503 before and while draining, as `/readyz`."""
    ready = engine.ready and not request.app.state.lifecycle.draining
    return Response(status_code=200 if ready else 503)


@router.get("")
async def server_metadata() -> dict:
    """Server name, version and the protocol extensions it speaks."""
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": [BINARY_EXTENSION]}


@router.post("/repository/index")
async def repository_index(m: ModelDep) -> list[dict]:
    """Triton's model-repository index: the model names a client can call, all ready."""
    return [
        {"name": model.name, "version": model.version, "state": "READY", "reason": ""}
        for model in protocol_models(m).values()
    ]


@router.get("/models/{name}", responses=MODEL_ERRORS)
@router.get("/models/{name}/versions/{version}", responses=MODEL_ERRORS)
async def model_metadata(m: ModelDep, name: str, version: str | None = None) -> dict:
    """Inputs and outputs with their datatypes and shapes (-1: any batch size)."""
    return find_model(m, name, version).metadata()


@router.get("/models/{name}/ready", response_class=Response, responses={**NO_BODY, **MODEL_ERRORS})
@router.get(
    "/models/{name}/versions/{version}/ready",
    response_class=Response,
    responses={**NO_BODY, **MODEL_ERRORS},
)
async def model_ready(m: ModelDep, name: str, version: str | None = None) -> Response:
    """200 when the model is loaded (it always is once the server is ready); 404 if unknown."""
    find_model(m, name, version)
    return Response(status_code=200)


def add_infer_routes(
    router: APIRouter, dependencies: Sequence[Any], responses: OpenApiResponses
) -> None:
    """The infer routes on `router` itself, the app's: inference is the hot path, so they skip
    FastAPI's per-request machinery (direct routes) and an included router's second match."""
    for path in ("/models/{name}/infer", "/models/{name}/versions/{version}/infer"):
        add_direct_route(
            router,
            PREFIX + path,
            infer,
            tags=["open inference protocol"],
            dependencies=dependencies,
            response_class=Response,
            responses={**responses, **INFER_RESPONSES},
            openapi_extra=INFER_BODY,
        )


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Runs a batch through the model: JSON tensors, or JSON + binary tensors (`tritonclient`).

    A direct route (`app.routes.direct`): it starts its deadline, and reads the engine and the
    binary header itself (`INFER_BODY` documents the header)."""
    deadline.start(request.scope, settings_of(request).request_timeout_s)
    engine = engine_of(request)
    m = engine.current  # pinned for the whole request, as `ModelDep` does
    model = find_model(m, name, version)
    header_length = request.headers.get(HEADER_LENGTH)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise BadInferenceRequest(f"Content-Encoding {encoding!r} is not supported; send plain")
    body = await _read_body(request, max_json_body_bytes(model.inputs, MAX_SAMPLES))
    parse = (parse_infer_request, body, header_length, model.inputs, MAX_SAMPLES)
    parsed = await _codec(len(body) <= INLINE_BODY_BYTES, *parse)
    del body, parse
    outputs = select_outputs(parsed, model.outputs)
    tensors = {k: np.array(v, dtype=np.float32, copy=True) for k, v in parsed.inputs.items()}
    results = await model.run(engine, m, tensors)
    chosen = [(spec, binary, results[spec.name]) for spec, binary in outputs]
    inline = output_values(chosen) <= INLINE_OUTPUT_VALUES
    answer, headers = await _codec(
        inline, encode_infer_response, model.name, model.version, parsed.id, chosen
    )
    return Response(answer, headers=headers)


# One thread for the big /v2 bodies' JSON: the codec holds the GIL while it works, and several
# threads doing so at once would keep the event loop (and every light request) from it for long.
_CODEC = ThreadPoolExecutor(1, thread_name_prefix="oip-codec")


async def _codec(inline: bool, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` here when it is cheaper than a thread hop, else on the codec thread, in this
    request's context (its deadline, its span)."""
    if inline:
        return fn(*args)
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(
        _CODEC, functools.partial(context.run, fn, *args)
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past this model's `limit`: from its Content-Length before a byte is
    read, else once read. BodyLimitMiddleware has already cut every /v2 body at the largest
    model's limit (`MAX_BODY_BYTES`), so reading it first costs at most that."""
    too_large = f"request body too large for this model: at most {limit} bytes for a full batch"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(too_large)
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(too_large)
    return body
