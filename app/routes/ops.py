"""Operations: liveness, readiness, what is being served, and Prometheus metrics.

`router` is open to probes and scrapers; `model_router` (`/model`) is guarded like the API.
"""

from __future__ import annotations

import dataclasses
import platform

import fastapi
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.inference.engine import Engine
from app.inference.served import LoadedModel
from app.routes.deps import EngineDep, ModelDep
from app.schemas import ArtifactResponse, BackendResponse, ModelResponse, Status
from models.prior import describe as describe_prior

router = APIRouter(tags=["operations"])
model_router = APIRouter(tags=["operations"])

_ALIVE = b'{"status":"ok"}'


@router.get("/healthz", response_model=Status)
async def healthz() -> Response:
    """The process is up and its event loop answers."""
    return Response(_ALIVE, media_type="application/json")


@router.get("/readyz", response_model=Status, responses={503: {"model": Status}})
async def readyz(engine: EngineDep, request: Request) -> Response:
    """200 once the model is loaded and warmed up; 503 before, and from the moment a shutdown
    begins (SIGTERM), so load balancers stop sending work while requests in flight finish."""
    if request.app.state.lifecycle.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if engine.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "loading"}, status_code=503)


def _guide(engine: Engine, m: LoadedModel) -> dict:
    """Whether chosen digits go through the guide classifier (models/digit_guide.py)."""
    active = engine.guide is not None and bool(describe_prior(m.prior)["digits"])
    return {"active": active, **(engine.guide.describe() if engine.guide is not None else {})}


def _torch_version(m: LoadedModel) -> dict[str, str]:
    """`versions.torch` as before exports existed, when torch serves the checkpoint."""
    kind, _, version = m.artifact.runtime.partition(" ")
    return {"torch": version} if kind == "torch" else {}


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def prometheus_metrics() -> Response:
    """Prometheus text format: requests, latencies, batch sizes, queue depth, model info."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@model_router.get("/model", response_model=ModelResponse)
async def model_info(m: ModelDep, engine: EngineDep) -> ModelResponse:
    """The checkpoint being served: its identity, training metrics and where it runs."""
    meta = m.metadata
    return ModelResponse(
        checkpoint=m.shown_as or str(m.checkpoint),
        sha256=m.sha256,
        preset=meta.get("preset"),
        latent_dim=m.latent_dim,
        config=m.config,
        device=m.device,
        dtype=m.dtype,
        artifact=ArtifactResponse(
            **{**dataclasses.asdict(m.artifact), "path": m.shown_as or m.artifact.path}
        ),
        backend=BackendResponse(**dataclasses.asdict(m.backend)),
        batching={
            "max_batch_size": engine.settings.max_batch_size,
            "max_wait_ms": engine.settings.max_wait_ms,
            "upload_batch_wait_ms": engine.settings.upload_batch_wait_ms,
            "inline_lone_batches": engine.lone_rows_now,
        },
        prior={**describe_prior(m.prior), "digit_guide": _guide(engine, m)},
        typicality=(
            None if m.typicality is None else m.typicality.describe(engine.settings.digit_threshold)
        ),
        metrics=meta.get("metrics") or {},
        training={k: v for k, v in meta.items() if k not in ("metrics", "preset")},
        versions={
            "python": platform.python_version(),
            "runtime": m.artifact.runtime,
            **_torch_version(m),
            "fastapi": fastapi.__version__,
            "checkpoint_torch": str(meta.get("torch_version", "unknown")),
        },
        loaded_at=m.loaded_at,
    )
