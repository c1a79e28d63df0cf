"""POST /admin/reload: swap the served checkpoint without a restart (mounted only with a token)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Depends

from app.auth import require_admin
from app.deps import EngineDep
from app.routes.openapi import ERRORS
from app.routes.ops import model_info
from app.schemas import ModelResponse, ReloadRequest

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={401: ERRORS[401], 409: {"description": "checkpoint refused; old model serving"}},
)


@router.post("/reload", response_model=ModelResponse)
async def reload(
    engine: EngineDep, body: Annotated[ReloadRequest | None, Body()] = None
) -> ModelResponse:
    """Loads and warms a checkpoint beside the serving one, then swaps atomically.

    Requests already running finish on the old model. A checkpoint that fails to load is refused
    with 409 and the old model keeps serving.
    """
    path = Path(body.checkpoint) if body and body.checkpoint else None
    return await model_info(await engine.reload(path))
