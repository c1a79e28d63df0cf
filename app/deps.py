"""Dependencies shared by the routes: settings, the engine, the model a request runs on, format."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Query, Request

from app.config import Settings
from app.engine import Engine, LoadedModel


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


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
ModelDep = Annotated[LoadedModel, Depends(get_model)]
JsonDep = Annotated[bool, Depends(wants_json)]
