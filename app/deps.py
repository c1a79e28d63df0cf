"""Dependencies shared by the routes: settings, the engine, the examples, the model a request
runs on, and the response format. Routes reach the app's state only through these, so a test or
another app can hand them different ones."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from fastapi import Depends, File, Query, Request, UploadFile

from app.admission import DecodeGate
from app.config import Settings
from app.engine import Engine, LoadedModel
from app.examples import ExampleStore
from app.uploads import UPLOAD_DESCRIPTION, PreprocessQuery, read_upload, to_model_input


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_examples(request: Request) -> ExampleStore:
    return request.app.state.examples


async def get_decode_gate(request: Request) -> DecodeGate:
    return request.app.state.decode_gate


async def get_model(engine: Annotated[Engine, Depends(get_engine)]) -> LoadedModel:
    """The model this request runs on, pinned at its start so a reload cannot change it midway."""
    return engine.current


async def wants_json(
    request: Request,
    format: Annotated[
        Literal["png", "json"] | None,
        Query(description="`json` for base64 PNGs plus the numbers; default PNG (or Accept)"),
    ] = None,
) -> bool:
    """`?format=` wins; otherwise `Accept: application/json` asks for JSON."""
    if format is not None:
        return format == "json"
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "image/png" not in accept


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ExamplesDep = Annotated[ExampleStore, Depends(get_examples)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
JsonDep = Annotated[bool, Depends(wants_json)]
DecodeGateDep = Annotated[DecodeGate, Depends(get_decode_gate)]


async def uploaded_image(
    file: Annotated[UploadFile, File(description=UPLOAD_DESCRIPTION)],
    settings: SettingsDep,
    gate: DecodeGateDep,
    preprocess: PreprocessQuery = "auto",
) -> torch.Tensor:
    """The model input [1, 1, 32, 32] of the multipart `file`, within the upload limits."""
    return await to_model_input(await read_upload(file, settings), settings, preprocess, gate)


UploadedImage = Annotated[torch.Tensor, Depends(uploaded_image)]
