"""Dependencies shared by the routes: settings, the engine, the examples, the model a request
runs on, and the response format. Routes reach the app's state only through these, so a test or
another app can hand them different ones."""

from __future__ import annotations

import functools
from typing import Annotated, Literal

import numpy as np
from fastapi import Depends, File, Query, Request, UploadFile

from app import tracing
from app.config import Settings
from app.deadline import time_left_s
from app.http.shedding import RESERVATION_KEY
from app.images.examples import ExampleStore
from app.images.normalise import normalize
from app.images.upload import UPLOAD_DESCRIPTION, open_upload, read_upload
from app.inference.admission import DecodeGate, IncomingUpload
from app.inference.engine import Engine
from app.inference.served import LoadedModel
from app.routes.responses import asks_for_json


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


async def get_settings(request: Request) -> Settings:
    return settings_of(request)


async def get_engine(request: Request) -> Engine:
    return engine_of(request)


async def get_examples(request: Request) -> ExampleStore:
    return request.app.state.examples


async def get_decode_gate(request: Request) -> DecodeGate:
    return request.app.state.decode_gate


async def get_model(engine: Annotated[Engine, Depends(get_engine)]) -> LoadedModel:
    """The model this request runs on, pinned at its start so a reload cannot change it midway."""
    return engine.current


FormatQuery = Annotated[
    Literal["png", "json"] | None,
    Query(description="`json` for base64 PNGs plus the numbers; default PNG (or Accept)"),
]


async def wants_json(request: Request, format: FormatQuery = None) -> bool:
    """`?format=` wins; otherwise `Accept: application/json` asks for JSON."""
    return asks_for_json(format, request.headers.get("accept", ""))


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ExamplesDep = Annotated[ExampleStore, Depends(get_examples)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
JsonDep = Annotated[bool, Depends(wants_json)]
DecodeGateDep = Annotated[DecodeGate, Depends(get_decode_gate)]


Preprocess = Literal["auto", "none"]
PreprocessQuery = Annotated[
    Preprocess, Query(description="`none` skips MNIST normalisation for MNIST-like inputs")
]


@tracing.traced("upload.decode")
async def to_model_input(
    data: bytes,
    settings: Settings,
    preprocess: Preprocess,
    gate: DecodeGate,
    incoming: IncomingUpload | None = None,
) -> np.ndarray:
    """Upload bytes -> [1, 1, 32, 32]: the header checked here, the decode on the gate's threads,
    which bound the pixels being decoded at once (503 when it cannot finish in time).
    `incoming`: the place its request held at the gate while the body arrived."""
    image = open_upload(
        data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels
    )
    pixels = image.size[0] * image.size[1]
    decode = functools.partial(normalize, image, preprocess=preprocess != "none")
    x = await gate.run(pixels, decode, time_left_s(settings.request_timeout_s), incoming)
    return x[None]


def incoming_upload(request: Request) -> IncomingUpload | None:
    """What the guard reserved at the decode gate for this request's upload, if anything."""
    reservation = request.scope.get(RESERVATION_KEY)
    return reservation if isinstance(reservation, IncomingUpload) else None


IncomingDep = Annotated[IncomingUpload | None, Depends(incoming_upload)]


async def uploaded_image(
    file: Annotated[UploadFile, File(description=UPLOAD_DESCRIPTION)],
    settings: SettingsDep,
    gate: DecodeGateDep,
    incoming: IncomingDep,
    preprocess: PreprocessQuery = "auto",
) -> np.ndarray:
    """The model input [1, 1, 32, 32] of the multipart `file`, within the upload limits."""
    data = await read_upload(file, settings.max_upload_bytes)
    return await to_model_input(data, settings, preprocess, gate, incoming)


UploadedImage = Annotated[np.ndarray, Depends(uploaded_image)]
