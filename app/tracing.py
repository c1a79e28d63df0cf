"""OpenTelemetry traces, on only when the standard `OTEL_*` variables ask for them.

Whether tracing is on is read from the environment once, when this module is imported, and every
traced step is wired in then or when the app is built (`traced` hands back the function itself,
the engine picks the plain batcher, `create_app` adds no span middleware). So with tracing off the
request path is the same code as before tracing existed and costs nothing. The SDK and the
exporter (the `[otel]` extra) are imported only when tracing is on. At exit, `shutdown` waits for
the collector at most `EXIT_DEADLINE_S`, whatever the SDK does.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

SERVICE_NAME = "mnist-vae"  # when OTEL_SERVICE_NAME (or the resource attributes) name none
TRACER_NAME = "app"
PROPAGATED = (b"traceparent", b"tracestate")  # W3C Trace Context, the headers we read
EXIT_DEADLINE_S = 2.0  # the longest the exit waits for the collector (docs/operations.md, Traces)
EXPORT_TIMEOUT_S = EXIT_DEADLINE_S  # one OTLP export, retries included, unless OTEL_* set one
TIMEOUT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")

log = logging.getLogger("app.tracing")


def wants_tracing(env: Mapping[str, str]) -> bool:
    """Tracing is on when `OTEL_TRACES_EXPORTER` names an exporter, or an OTLP endpoint is set
    without it; off by default (unlike the SDK's default of `otlp`), and under
    `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


ENABLED: bool = wants_tracing(os.environ)
_provider: Any = None  # the SDK's TracerProvider, once `configure` has built it


class TracingConfigError(RuntimeError):
    """The `OTEL_*` variables ask for something this service cannot export with."""


def configure(env: Mapping[str, str] | None = None) -> None:
    """Builds the tracer provider from the `OTEL_*` variables and makes it the global one (once
    per process). The SDK reads the sampler (`OTEL_TRACES_SAMPLER[_ARG]`), the resource
    (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), the batch processor's schedule
    (`OTEL_BSP_*`) and the exporter's endpoint, headers and timeout itself."""
    global _provider
    if _provider is not None:
        return
    env = os.environ if env is None else env
    _require_sdk()
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({} if _names_service(env) else {"service.name": SERVICE_NAME})
    # No exit hook: it would run the SDK's unbounded shutdown again after `shutdown` gave up.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in _exporters(env):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider


def check(env: Mapping[str, str] | None = None) -> None:
    """Raises `TracingConfigError` when tracing is asked for but cannot run (`vae-serve` calls
    it before starting, so a typo stops it with one line instead of a traceback per worker)."""
    if ENABLED:
        _require_sdk()
        _exporters(os.environ if env is None else env)


def shutdown(deadline_s: float = EXIT_DEADLINE_S) -> bool:
    """Exports the spans still queued and shuts the exporters down when the app stops, on a
    daemon thread waited for at most `deadline_s`, because the SDK ignores `force_flush`'s
    timeout and retries a collector that is down (that held the exit for the whole grace period).
    True when it finished in time."""
    provider = _provider
    if provider is None:
        return True
    done = threading.Event()

    def flush_then_shut_down() -> None:
        try:
            provider.force_flush()
            provider.shutdown()
        except Exception:
            log.exception("trace export failed at exit")
        finally:
            done.set()

    threading.Thread(target=flush_then_shut_down, name="trace-exit", daemon=True).start()
    if done.wait(deadline_s):
        return True
    log.warning(
        "trace export abandoned after %g s at exit: the collector did not take the last spans",
        deadline_s,
    )
    return False


def _require_sdk() -> None:
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise TracingConfigError(
            f"OTEL_* asks for traces but the [otel] extra is not installed (no {exc.name})"
        ) from None


def _names_service(env: Mapping[str, str]) -> bool:
    return bool(env.get("OTEL_SERVICE_NAME")) or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )


def _exporters(env: Mapping[str, str]) -> list[Any]:
    """The span exporters `OTEL_TRACES_EXPORTER` names (comma-separated; `otlp` by default).
    OTLP goes over HTTP/protobuf, the one protocol the `[otel]` extra installs."""
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    exporters = []
    for name in filter(None, names):
        if name == "otlp":
            protocol = env.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
            )
            if protocol and protocol != "http/protobuf":
                raise TracingConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: only http/protobuf is supported"
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            timeout = None if any(env.get(v) for v in TIMEOUT_VARIABLES) else EXPORT_TIMEOUT_S
            exporters.append(OTLPSpanExporter(timeout=timeout))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={name}: this service exports otlp or console"
            )
    return exporters


def tracer() -> Any:
    """The service's tracer (a proxy until `configure` sets the provider, then the real one)."""
    from opentelemetry import trace

    return trace.get_tracer(TRACER_NAME)


def traced(name: str) -> Callable[[F], F]:
    """Decorator: each call runs in a span called `name`, a child of the current one. With
    tracing off it returns the function itself, so the undecorated code is what runs.

    A request whose span is not recorded (sampled out) gets no child spans at all: the standard
    samplers would drop them too, and creating them cost about a tenth of a request's CPU."""

    def decorate(fn: F) -> F:
        if not ENABLED:
            return fn
        from opentelemetry.trace import get_current_span

        tracer_ = tracer()
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def traced_coroutine(*args: Any, **kwargs: Any) -> Any:
                if not get_current_span().is_recording():  # see `recording`
                    return await fn(*args, **kwargs)
                with tracer_.start_as_current_span(name):
                    return await fn(*args, **kwargs)

            return traced_coroutine  # type: ignore[return-value]

        @functools.wraps(fn)
        def traced_call(*args: Any, **kwargs: Any) -> Any:
            if not get_current_span().is_recording():
                return fn(*args, **kwargs)
            with tracer_.start_as_current_span(name):
                return fn(*args, **kwargs)

        return traced_call  # type: ignore[return-value]

    return decorate


def context_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> Any:
    """The caller's trace context from an ASGI request's W3C `traceparent` and `tracestate`
    headers (through the configured propagators, `OTEL_PROPAGATORS`); None when it sent none."""
    carrier = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers
        if name in PROPAGATED
    }
    if not carrier:
        return None
    from opentelemetry import propagate

    return propagate.extract(carrier)
