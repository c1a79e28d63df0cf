"""POST /admin/reload: swap the served checkpoint without a restart (mounted only with a token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from app.http.auth import require_admin
from app.routes.checkpoint_paths import checkpoint_root, resolve_checkpoint, shown_in_directory
from app.routes.deps import EngineDep, SettingsDep
from app.routes.openapi import error, errors
from app.routes.ops import model_info
from app.schemas import ModelResponse, ReloadRequest

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={
        **error(401, "admin token missing or wrong"),
        **error(403, "outside the checkpoint directory"),
        **error(404, "no such file in the checkpoint directory"),
        **error(409, "checkpoint refused; the old model keeps serving"),
        **error(413, "checkpoint file over 1 GiB, or body over the limit"),
        **errors(400, 422),
    },
)


@router.post("/reload", response_model=ModelResponse)
async def reload(
    engine: EngineDep,
    settings: SettingsDep,
    body: Annotated[ReloadRequest | None, Body()] = None,
) -> ModelResponse:
    """Loads and warms a checkpoint beside the serving one, then swaps atomically.

    `checkpoint` is a file in `VAE_CHECKPOINT_DIR` (default: the served checkpoint's folder),
    by name or by absolute path; anything else is refused with 403, 404 or 422.

    Requests already running finish on the old model. A checkpoint that fails to load is refused
    with 409 and the old model keeps serving. Answers name the checkpoint as the caller did (or,
    re-reading the configured one, relative to the checkpoint directory), never by the server's
    absolute path.
    """
    root = checkpoint_root(settings.reload_dir)
    if body is not None and body.checkpoint is not None:
        path, shown_as = resolve_checkpoint(body.checkpoint, root), body.checkpoint
    else:
        path, shown_as = settings.checkpoint, shown_in_directory(settings.checkpoint, root)
    return await model_info(await engine.reload(path, shown_as), engine)
