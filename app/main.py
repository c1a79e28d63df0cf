"""Builds the FastAPI app: settings, lifespan (load + warm the model), routes, error mapping.

`build_service` also hands the server what it needs of the app, explicitly: the settings it was
built with, the lifecycle flag a SIGTERM sets, and the overload check the edge runs on each
request's head (`app.server.shutdown.serve`). `create_app` is the app alone, for plain uvicorn,
Ray Serve and the tests.
"""

from __future__ import annotations

import functools
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Security
from fastapi.middleware.cors import CORSMiddleware
from pydantic import ValidationError

from app import tracing
from app.config import Settings, configuration_error
from app.http import shedding
from app.http.auth import api_key_scheme
from app.http.body_limit import BodyLimitMiddleware
from app.http.context import RequestContextMiddleware
from app.http.error_bodies import install_error_handlers
from app.http.guard import RequestGuardMiddleware, start_deadline
from app.http.lifecycle import Lifecycle
from app.http.logs import configure_logging
from app.http.unguarded import WITHOUT_EDGE, BodyStallMiddleware
from app.images.examples import ExampleStore
from app.inference.admission import DecodeGate
from app.inference.engine import Engine
from app.routes import admin, examples, generate, images, oip, ops
from app.routes.openapi import guard_errors
from app.routes.shedding import reserver, shedder
from app.routes.static_pages import StaticPages
from models.checkpoint_errors import CheckpointError

log = logging.getLogger("app")
STATIC_DIR = Path(__file__).resolve().parent / "static"

DESCRIPTION = """A convolutional VAE trained on MNIST, served over HTTP.

Image responses are PNG by default; `?format=json` or `Accept: application/json` gives JSON with
base64 PNGs and the numbers behind them. When `VAE_API_KEY` is set, every route except
`/healthz`, `/readyz`, `/metrics`, `/v2/health/*` and `/admin/*` needs
`Authorization: Bearer <key>`; `/admin/*` takes `Authorization: Bearer <VAE_ADMIN_TOKEN>` instead.
The `/v2` routes speak the Open Inference Protocol (KServe v2, as Triton and `tritonclient`).

Uploads (and a decoded `?image=`) may be at most {max_upload_bytes} bytes
(`VAE_MAX_UPLOAD_BYTES`) and {max_image_pixels} pixels (`VAE_MAX_IMAGE_PIXELS`).
"""


@dataclass(frozen=True)
class Service:
    """The app and what the server running it needs of it (see the module doc)."""

    app: FastAPI
    settings: Settings
    lifecycle: Lifecycle
    overload_check: shedding.Check


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app without vae-serve's edge in front (plain uvicorn, Ray Serve, the tests)."""
    return build_service(settings or Settings(), behind_edge=False).app


def build_service(settings: Settings, *, behind_edge: bool) -> Service:
    """The app; `behind_edge`: served by `vae-serve`, whose edge bounds slow bodies itself."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.access_log_sample)
        if not behind_edge:
            log.warning(WITHOUT_EDGE)
        try:
            await app.state.engine.start()
        except CheckpointError as exc:  # `vae-serve` checks first; plain `uvicorn` lands here
            log.error("cannot serve: %s", exc)
            raise
        gc.collect()
        gc.freeze()  # the model and modules are permanent: keep them out of every GC pass
        try:
            yield
        finally:
            await app.state.engine.stop()
            app.state.decode_gate.shutdown()
            tracing.shutdown()

    app = FastAPI(
        title="MNIST VAE",
        version="0.1.0",
        description=DESCRIPTION.format(
            max_upload_bytes=settings.max_upload_bytes,
            max_image_pixels=settings.max_image_pixels,
        ),
        lifespan=lifespan,
        # Prometheus (`/metrics`) is the service's metrics, `app.http.server_span` its traces
        # (OTEL_*) and `app.http.logs` its logs; FastAPI's OpenTelemetry hook asked the tracer,
        # meter and logger providers whether it was on for every request (the logger provider
        # reads the environment each time: 1 % of `/sample`'s CPU).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.engine = Engine(settings)
    app.state.examples = ExampleStore()
    lifecycle = app.state.lifecycle = Lifecycle()
    app.state.decode_gate = DecodeGate(settings.decode_concurrency, settings.decode_pixel_budget)
    app.state.engine.batch_uploads_with(app.state.decode_gate)

    # OpenAPI declares what the guard asks of each router: the API key only when one is set (the
    # admin routes declare their own token), and the 401, 503 and 504 it may answer there.
    key = settings.api_key is not None
    api_key = [Security(api_key_scheme)] if key else []
    timed = [*api_key, Depends(start_deadline)]
    errors = guard_errors(api_key=key, deadline=True)
    protocol_errors = guard_errors(api_key=key, deadline=True, protocol=True)
    # The hot routes first (routing tries each route in turn); as direct routes
    # (`app.routes.direct`) they start their deadline themselves.
    generate.add_sample_route(app.router, dependencies=api_key, responses=errors)
    oip.add_infer_routes(app.router, dependencies=api_key, responses=protocol_errors)
    app.include_router(ops.router)
    app.include_router(oip.health_router)
    app.include_router(
        ops.model_router, dependencies=api_key, responses=guard_errors(api_key=key, deadline=False)
    )
    for module in (generate, images, examples):
        app.include_router(module.router, dependencies=timed, responses=errors)
    app.include_router(oip.router, dependencies=timed, responses=protocol_errors)
    if settings.admin_token is not None:
        admin_errors = guard_errors(api_key=False, deadline=False)
        app.include_router(admin.router, responses=admin_errors)
    install_error_handlers(app)

    # The pipeline every request passes, innermost first (each `add_middleware` wraps the rest):
    # the body's size, the guard (API key, drain, deadline), CORS, a stalled body's 408 (only
    # without vae-serve's edge), the server span (only with tracing on), the request context (id,
    # metrics, access line, last-resort 500).
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        protocol_max_bytes=oip.MAX_BODY_BYTES,
    )
    shed = shedder(app.state.engine, app.state.decode_gate, settings.request_timeout_s)
    app.add_middleware(
        RequestGuardMiddleware,
        settings=settings,
        lifecycle=lifecycle,
        shed=shed,
        reserve=reserver(app.state.decode_gate),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-ID"],
            expose_headers=["X-Request-ID", "X-Seed"],
        )
    if not behind_edge:  # vae-serve's edge times bodies out before the app sees them
        app.add_middleware(BodyStallMiddleware, timeout_s=settings.body_timeout_s)
    if tracing.ENABLED:  # the server span, inside the request context so it has the id
        from app.http.server_span import ServerSpanMiddleware

        tracing.configure()
        app.add_middleware(ServerSpanMiddleware)
    app.add_middleware(RequestContextMiddleware)
    if STATIC_DIR.is_dir():
        app.mount("/", StaticPages(directory=STATIC_DIR, html=True), name="static")
    return Service(app, settings, lifecycle, shed)


@functools.cache
def _app_from_environment() -> FastAPI:
    """`uvicorn app.main:app`: a bad `VAE_*` variable stops it with one line, like `vae-serve`."""
    try:
        settings = Settings()
        tracing.check()
    except ValidationError as exc:
        print(f"app.main: invalid configuration: {configuration_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except tracing.TracingConfigError as exc:
        print(f"app.main: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return create_app(settings)


def __getattr__(name: str) -> FastAPI:
    """`app`, built on first use (`uvicorn app.main:app`), so that importing this module to build
    an app another way (`vae-serve`, the tests) reads no settings and builds nothing."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _app_from_environment()
