"""OpenTelemetry traces from a real `vae-serve`, exported over real OTLP/HTTP to a receiver on
loopback in this test, decoded from protobuf and checked span by span (issue 19). With tracing
off, the request path must be the code without it (the last tests)."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from app import tracing
from app.http.server_span import ServerSpanMiddleware
from app.inference.batching import MicroBatcher
from app.main import create_app
from harness.live_server import VAE_SERVE, LiveServer, server_env, start_that_stops
from models.checkpoint import load_checkpoint

WAIT_S = 20  # for the batch processor (100 ms schedule here) to deliver what a test looks for


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: keeps every span POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.service_names: set[str] = set()
        self.paths: list[str] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.paths.append(self.path)
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for attribute in resource_spans.resource.attributes:
                        if attribute.key == "service.name":
                            received.service_names.add(attribute.value.string_value)
                    for scope_spans in resource_spans.scope_spans:
                        received.spans.extend(scope_spans.spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, found, what: str):
        """Polls until `found(spans)` returns something truthy."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            result = found(list(self.spans))
            if result:
                return result
            time.sleep(0.05)
        names = sorted({s.name for s in self.spans})
        raise AssertionError(f"no {what} among {len(self.spans)} spans ({names})")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attributes(span: Span) -> dict[str, object]:
    return {a.key: value(a.value) for a in span.attributes}


def value(v: AnyValue) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind)


def server_span(spans: list[Span], request_id: str) -> Span | None:
    for span in spans:
        if (
            span.kind == Span.SPAN_KIND_SERVER
            and attributes(span).get("vae.request_id") == request_id
        ):
            return span
    return None


def children(spans: list[Span], parent: Span) -> dict[str, Span]:
    return {
        s.name: s
        for s in spans
        if s.trace_id == parent.trace_id and s.parent_span_id == parent.span_id
    }


def tree_of(request_id: str, names: set[str]):
    """A finder: the request's server span and its children once all of `names` are there."""

    def found(spans: list[Span]):
        root = server_span(spans, request_id)
        if root is None:
            return None
        kids = children(spans, root)
        return (root, kids) if names <= kids.keys() else None

    return found


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture(scope="module")
def traced_server(tiny_checkpoint: Path, receiver: OtlpReceiver) -> Iterator[LiveServer]:
    server = LiveServer(
        tiny_checkpoint,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_SERVICE_NAME="vae-under-test",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="1.0",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    try:
        yield server
    finally:
        server.stop()


RECONSTRUCT_CHILDREN = {"upload.decode", "batch.queue", "batch.forward", "response.encode"}


def test_a_reconstruct_is_one_trace_with_its_request_id(
    traced_server: LiveServer, receiver: OtlpReceiver, digit_png: bytes
) -> None:
    response = httpx.post(
        f"{traced_server.url}/reconstruct",
        files={"file": ("7.png", digit_png, "image/png")},
        headers={"X-Request-ID": "trace-reconstruct-1"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "trace-reconstruct-1"

    root, kids = receiver.wait_for(
        tree_of("trace-reconstruct-1", RECONSTRUCT_CHILDREN), "/reconstruct span tree"
    )
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    assert "vae-under-test" in receiver.service_names
    assert root.name == "POST /reconstruct"
    assert root.parent_span_id == b""  # no traceparent sent: a new trace
    assert attributes(root) == {
        "http.request.method": "POST",
        "url.path": "/reconstruct",
        "url.scheme": "http",
        "vae.request_id": "trace-reconstruct-1",
        "http.route": "/reconstruct",
        "http.response.status_code": 200,
    }
    # The steps in order, each inside the request's span.
    decode, queue = kids["upload.decode"], kids["batch.queue"]
    forward, encode = kids["batch.forward"], kids["response.encode"]
    assert decode.end_time_unix_nano <= queue.start_time_unix_nano
    assert queue.end_time_unix_nano <= forward.end_time_unix_nano
    assert forward.end_time_unix_nano <= encode.start_time_unix_nano
    assert encode.end_time_unix_nano <= root.end_time_unix_nano
    assert root.start_time_unix_nano <= decode.start_time_unix_nano
    # The batch's span links to the request it served, and the wait links to the batch.
    assert attributes(forward)["vae.operation"] == "reconstruct"
    assert attributes(forward)["vae.batch.size"] == 1
    assert attributes(forward)["vae.batch.requests"] == 1
    assert [(link.trace_id, link.span_id) for link in forward.links] == [
        (root.trace_id, root.span_id)
    ]
    assert [(link.trace_id, link.span_id) for link in queue.links] == [
        (forward.trace_id, forward.span_id)
    ]


def test_a_batch_links_to_every_request_it_served(
    traced_server: LiveServer, receiver: OtlpReceiver, digit_png: bytes
) -> None:
    """Concurrent uploads: each request's wait links to the forward pass that served it, and that
    pass links back to the request, however the requests were batched."""
    ids = [f"trace-batch-{i}" for i in range(12)]

    def reconstruct(request_id: str) -> int:
        return httpx.post(
            f"{traced_server.url}/reconstruct",
            files={"file": ("7.png", digit_png, "image/png")},
            headers={"X-Request-ID": request_id},
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(len(ids)) as pool:
        assert list(pool.map(reconstruct, ids)) == [200] * len(ids)

    sizes = []
    for request_id in ids:
        root, kids = receiver.wait_for(tree_of(request_id, {"batch.queue"}), request_id)
        (link,) = kids["batch.queue"].links
        forward = receiver.wait_for(
            lambda spans, link=link: next((s for s in spans if s.span_id == link.span_id), None),
            f"the forward pass of {request_id}",
        )
        assert forward.name == "batch.forward"
        served = {(lk.trace_id, lk.span_id) for lk in forward.links}
        assert (root.trace_id, root.span_id) in served
        assert attributes(forward)["vae.batch.requests"] == len(forward.links)
        assert attributes(forward)["vae.batch.size"] == len(forward.links)  # one row each
        sizes.append(len(forward.links))
    print("requests per forward pass:", sorted(sizes))


def test_the_callers_traceparent_is_honoured_on_sample(
    traced_server: LiveServer, receiver: OtlpReceiver
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    response = httpx.post(
        f"{traced_server.url}/sample",
        json={"n": 4, "seed": 3},
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "X-Request-ID": "trace-sample"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    root, kids = receiver.wait_for(
        tree_of("trace-sample", {"batch.forward", "response.encode"}), "/sample span tree"
    )
    assert root.trace_id.hex() == trace_id
    assert root.parent_span_id.hex() == parent_id
    assert root.name == "POST /sample"
    assert attributes(root)["http.route"] == "/sample"
    assert attributes(forward := kids["batch.forward"])["vae.operation"] == "decode"
    assert attributes(forward)["vae.batch.size"] == 4


def test_a_caller_that_did_not_sample_gets_no_spans(
    traced_server: LiveServer, receiver: OtlpReceiver, digit_png: bytes
) -> None:
    """`traceparent` with the sampled flag off: the parent-based sampler drops the request, and
    none of its steps makes a span; the next request, sampled, is exported whole."""
    unsampled, sampled = secrets.token_hex(16), secrets.token_hex(16)
    with httpx.Client(base_url=traced_server.url, timeout=30) as client:
        for request_id, trace_id, flags in (
            ("trace-unsampled", unsampled, "00"),
            ("trace-sampled-after", sampled, "01"),
        ):
            response = client.post(
                "/reconstruct",
                files={"file": ("7.png", digit_png, "image/png")},
                headers={
                    "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-{flags}",
                    "X-Request-ID": request_id,
                },
            )
            assert response.status_code == 200
    root, _ = receiver.wait_for(
        tree_of("trace-sampled-after", RECONSTRUCT_CHILDREN), "the sampled request"
    )
    assert root.trace_id.hex() == sampled
    time.sleep(0.5)  # five schedule delays more for anything of the first request
    assert [s.name for s in receiver.spans if s.trace_id.hex() == unsampled] == []
    assert server_span(receiver.spans, "trace-unsampled") is None


def test_every_kind_of_route_is_traced_under_its_template(
    traced_server: LiveServer, receiver: OtlpReceiver, tiny_checkpoint: Path
) -> None:
    model, metadata = load_checkpoint(tiny_checkpoint)
    decoder = f"{metadata['dataset']['name']}-vae-decoder"
    infer = {
        "inputs": [
            {
                "name": "z",
                "datatype": "FP32",
                "shape": [1, model.latent_dim],
                "data": [0.0] * model.latent_dim,
            }
        ]
    }
    calls = {  # request id: (method, path, body, route template, status, child spans)
        "trace-encode": (
            "GET",
            "/encode?example=7-0",
            None,
            "/encode",
            200,
            {"batch.queue", "batch.forward", "response.encode"},
        ),
        "trace-infer": (
            "POST",
            f"/v2/models/{decoder}/infer",
            infer,
            "/v2/models/{name}/infer",
            200,
            {"upload.decode", "batch.queue", "batch.forward", "response.encode"},
        ),
        "trace-health": ("GET", "/healthz", None, "/healthz", 200, set()),
    }
    with httpx.Client(base_url=traced_server.url, timeout=30) as client:
        for request_id, (method, path, body, _, status, _) in calls.items():
            response = client.request(method, path, json=body, headers={"X-Request-ID": request_id})
            assert response.status_code == status, (path, response.text)
        missing = client.get("/no-such-route", headers={"X-Request-ID": "trace-404"})
        assert missing.status_code == 404
    for request_id, (method, _, _, template, status, names) in calls.items():
        root, kids = receiver.wait_for(tree_of(request_id, names), request_id)
        assert root.name == f"{method} {template}"
        assert attributes(root)["http.route"] == template
        assert attributes(root)["http.response.status_code"] == status
        assert kids.keys() == names
    root, kids = receiver.wait_for(tree_of("trace-404", set()), "the 404's span")
    assert root.name == "GET" and "http.route" not in attributes(root)
    assert attributes(root)["http.response.status_code"] == 404


def test_errors_are_traced_with_their_status(
    traced_server: LiveServer, receiver: OtlpReceiver
) -> None:
    response = httpx.post(
        f"{traced_server.url}/reconstruct",
        files={"file": ("x.png", b"not an image", "image/png")},
        headers={"X-Request-ID": "trace-bad-upload"},
        timeout=30,
    )
    assert response.status_code == 422, response.text
    root, kids = receiver.wait_for(tree_of("trace-bad-upload", {"upload.decode"}), "a 4xx trace")
    assert attributes(root)["http.response.status_code"] == 422
    assert root.status.code != Status.STATUS_CODE_ERROR  # the caller's error, not the server's
    decode = kids["upload.decode"]
    assert decode.status.code == Status.STATUS_CODE_ERROR
    assert [e.name for e in decode.events] == ["exception"]
    assert "batch.forward" not in kids  # refused before the model


def test_tracing_is_off_without_otel_variables(settings) -> None:
    """Without OTEL_* asking for traces, nothing traced is wired into the app."""
    if tracing.wants_tracing(os.environ):
        pytest.skip("this test process was started with OTEL_* asking for traces")
    assert not tracing.ENABLED

    def f() -> None: ...

    assert tracing.traced("x")(f) is f
    app = create_app(settings)
    assert all(m.cls is not ServerSpanMiddleware for m in app.user_middleware)
    engine = app.state.engine
    for batcher in (engine.encoder, engine.decoder, engine.reconstructor):
        assert type(batcher) is MicroBatcher


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_which_variables_turn_tracing_on(env: dict[str, str], on: bool) -> None:
    assert tracing.wants_tracing(env) is on


def test_an_exporter_it_cannot_use_stops_vae_serve_with_one_line(tiny_checkpoint: Path) -> None:
    environ = {k: v for k, v in server_env(tiny_checkpoint).items() if not k.startswith("OTEL_")}
    result = start_that_stops(
        [*VAE_SERVE, "--port", "1"], {**environ, "OTEL_TRACES_EXPORTER": "zipkin"}
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "vae-serve: cannot serve: OTEL_TRACES_EXPORTER=zipkin: this service exports otlp or console"
    )


def test_the_last_spans_are_exported_when_vae_serve_drains(
    tiny_checkpoint: Path, receiver: OtlpReceiver
) -> None:
    """A batch schedule of a minute: the request's spans leave only because the drain flushes
    them before `vae-serve` exits."""
    server = LiveServer(
        tiny_checkpoint,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="60000",
    )
    try:
        response = httpx.post(
            f"{server.url}/sample",
            json={"n": 1},
            headers={"X-Request-ID": "trace-at-exit"},
            timeout=30,
        )
        assert response.status_code == 200
        time.sleep(0.5)
        assert server_span(receiver.spans, "trace-at-exit") is None  # still in the batch queue
    finally:
        server.stop()
    assert server.process.returncode == 0
    receiver.wait_for(tree_of("trace-at-exit", {"batch.forward", "response.encode"}), "exit flush")
