"""Health, readiness, model info, Prometheus metrics, request ids and the OpenAPI docs."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.http.context import RequestContextMiddleware
from app.main import create_app


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_once_loaded(client):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json() == {"status": "ready"}


def test_readyz_is_503_before_the_model_is_loaded(settings):
    async def probe() -> tuple[int, int]:
        app = create_app(settings)  # lifespan not run: nothing loaded yet
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            ready = await client.get("/readyz")
            sample = await client.post("/sample", json={"n": 1})
        return ready.status_code, sample.status_code

    assert asyncio.run(probe()) == (503, 503)


def test_model_describes_the_checkpoint(client, tiny_checkpoint):
    from models.checkpoint import file_sha256

    body = client.get("/model").json()
    assert body["sha256"] == file_sha256(tiny_checkpoint)
    assert body["preset"] == "tiny"
    assert body["latent_dim"] == body["config"]["latent_dim"] == 8
    assert body["device"] == "cpu"
    assert "val_neg_elbo" in body["metrics"]
    assert {"python", "torch", "fastapi"} <= set(body["versions"])


def test_metrics_count_requests_per_route(client):
    client.get("/examples")
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["vae_http_requests"].samples
    assert any(s.labels["route"] == "/examples" and s.labels["status"] == "200" for s in requests)
    assert "vae_http_request_duration_seconds" in families
    assert "vae_batch_size" in families
    assert "vae_queue_depth" in families
    info = families["vae_model_info"].samples[0].labels
    assert info["preset"] == "tiny" and info["latent_dim"] == "8"


def test_every_response_has_a_request_id(client):
    ok = client.get("/healthz").headers["x-request-id"]
    missing = client.get("/examples/none.png").headers["x-request-id"]
    assert ok and missing and ok != missing


def test_a_sane_incoming_request_id_is_kept(client):
    response = client.get("/healthz", headers={"X-Request-ID": "trace-abc.123"})
    assert response.headers["x-request-id"] == "trace-abc.123"
    odd = client.get("/healthz", headers={"X-Request-ID": "bad id\twith tabs"})
    assert odd.headers["x-request-id"] != "bad id\twith tabs"


def test_openapi_documents_every_endpoint_with_examples(client):
    schema = client.get("/openapi.json").json()
    paths = set(schema["paths"])
    expected = {"/sample", "/reconstruct", "/encode", "/decode", "/interpolate", "/examples"}
    assert expected | {"/healthz", "/readyz", "/model", "/metrics"} <= paths
    sample_body = schema["components"]["schemas"]["SampleRequest"]
    assert sample_body["examples"]
    assert client.get("/docs").status_code == 200


def test_an_unexpected_error_is_a_500_that_keeps_its_request_id():
    async def broken(scope, receive, send):
        raise RuntimeError("a bug")

    async def call() -> httpx.Response:
        app = RequestContextMiddleware(broken)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/anything", headers={"X-Request-ID": "abc123"})

    response = asyncio.run(call())
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "abc123"
    assert response.json() == {"detail": "internal error", "request_id": "abc123"}


def test_model_says_how_requests_are_batched(make_settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = make_settings(inline_lone_batches="on", upload_batch_wait_ms=3.0)
    with TestClient(create_app(settings)) as client:
        batching = client.get("/model").json()["batching"]
    assert batching == {
        "max_batch_size": 64,
        "max_wait_ms": 0.0,
        "upload_batch_wait_ms": 3.0,
        "inline_lone_batches": True,
    }
