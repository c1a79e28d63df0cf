"""`POST /sample`, the hot route: a direct route (`app.routes.direct`) that every middleware, the
guard and the error handlers wrap as they wrap every route."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.http.logs import ACCESS_LOG
from app.main import create_app


def test_the_format_query_and_accept_choose_the_same_answers(settings, serving):
    async def run():
        async with serving(settings) as client:
            plain = await client.post("/sample", json={"n": 4, "seed": 5, "temperature": 0.7})
            png = await client.post(
                "/sample?format=png", json={"n": 4, "seed": 5, "temperature": 0.7}
            )
            by_query = await client.post("/sample?format=json", json={"n": 1, "seed": 5})
            accept = {"Accept": "application/json"}
            by_accept = await client.post("/sample", json={"n": 1, "seed": 5}, headers=accept)
            bad = await client.post("/sample?format=xml", json={"n": 1})
            return plain, png, by_query, by_accept, bad

    plain, png, by_query, by_accept, bad = asyncio.run(run())
    assert plain.status_code == png.status_code == 200
    assert plain.content == png.content and plain.headers["content-type"] == "image/png"
    assert plain.headers["x-seed"] == "5" and plain.headers["x-request-id"]
    assert by_query.json() == by_accept.json() and by_query.json()["seed"] == 5
    assert bad.status_code == 422
    assert [e["loc"] for e in bad.json()["detail"]] == [["query", "format"]]


def test_invalid_bodies_get_422_naming_the_body(settings, serving):
    bodies = [b'{"n": 0}', b'{"n": 1, "extra": 1}', b"{not json", b'{"temperature": NaN}', b""]

    async def run():
        async with serving(settings) as client:
            headers = {"content-type": "application/json"}
            sent = [await client.post("/sample", content=body, headers=headers) for body in bodies]
            as_text = {"content-type": "text/plain"}
            return [*sent, await client.post("/sample", content=b'{"n": 1}', headers=as_text)]

    for response in asyncio.run(run()):
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail and all(e["loc"][0] == "body" and e["msg"] for e in detail)


def test_service_errors_have_the_handlers_shape(make_settings, serving):
    settings = make_settings(queue_size=1, max_batch_size=1)

    async def flood():
        async with serving(settings) as client:
            return await asyncio.gather(
                *[client.post("/sample", json={"n": 1, "seed": i}) for i in range(40)]
            )

    responses = asyncio.run(flood())
    refused = [r for r in responses if r.status_code == 503]
    assert refused and all(r.headers["retry-after"] == "1" for r in refused)
    assert refused[0].json() == {"detail": "decode queue is full, retry shortly"}


def test_it_is_counted_under_its_route(settings, serving):
    async def run():
        async with serving(settings) as client:
            await client.post("/sample", json={"n": 1, "seed": 1})
            return (await client.get("/metrics")).text

    text = asyncio.run(run())
    assert 'vae_http_requests_total{method="POST",route="/sample",status="200"}' in text


@pytest.fixture
def access_logged() -> Iterator[None]:
    """Access lines on, whichever test configured logging before (or none did)."""
    logger = logging.getLogger("app.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


def test_access_lines_are_json_with_every_field(tmp_path, access_logged):
    stream = (tmp_path / "access.log").open("w")
    ACCESS_LOG.configure(stream, sample=1.0)
    try:
        ACCESS_LOG.record("POST", "/sample", 200, "/sample", 1.25, "req-1")
        ACCESS_LOG.record("GET", "/nowhere", 404, "unmatched", 0.5, None)
        ACCESS_LOG.record("GET", '/a"b\\c/\u00e9\n', 404, "unmatched", 2.0, "x")
        ACCESS_LOG.flush()
    finally:
        ACCESS_LOG.configure(None)
        stream.close()
    lines = (tmp_path / "access.log").read_text().splitlines()
    first, second, third = [json.loads(line) for line in lines]
    # one line each: the newline in the third path is escaped, quotes and backslashes too
    assert len(lines) == 3
    assert third["msg"] == 'GET /a"b\\c/\u00e9\n 404'
    assert list(first) == ["ts", "level", "logger", "msg", "request_id", "status", "route", "ms"]
    assert first["msg"] == "POST /sample 200" and first["logger"] == "app.access"
    assert first["ts"].endswith("+00:00") and len(first["ts"]) == len(
        "2026-01-01T00:00:00.000+00:00"
    )
    assert second["status"] == 404 and "request_id" not in second


def test_access_log_sampling_keeps_every_error(tmp_path, access_logged):
    stream = (tmp_path / "access.log").open("w")
    ACCESS_LOG.configure(stream, sample=0.0)
    try:
        for _ in range(20):
            ACCESS_LOG.record("POST", "/sample", 200, "/sample", 1.0, "ok")
        ACCESS_LOG.record("POST", "/sample", 503, "/sample", 1.0, "busy")
        ACCESS_LOG.flush()
    finally:
        ACCESS_LOG.configure(None)
        stream.close()
    lines = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    assert [line["status"] for line in lines] == [503]


def test_with_a_key_the_guard_refuses_it(make_settings):
    key = "sample-key"
    with TestClient(create_app(make_settings(api_key=key))) as client:
        refused = client.post("/sample", json={"n": 1})
        wrong = client.post("/sample", json={"n": 1}, headers={"Authorization": "Bearer nope"})
        served = client.post("/sample", json={"n": 1}, headers={"Authorization": f"Bearer {key}"})
    for response in (refused, wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["x-request-id"]
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"


def test_a_cross_origin_call_still_gets_the_cors_headers(make_settings):
    origin = "https://digits.example"
    with TestClient(create_app(make_settings(cors_origins=[origin]))) as client:
        response = client.post("/sample", json={"n": 1}, headers={"Origin": origin})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert "x-seed" in response.headers["access-control-expose-headers"].lower()


def test_an_unexpected_error_is_a_500_naming_the_request(settings, monkeypatch):
    app = create_app(settings)
    with TestClient(app) as client:

        async def broken(*args, **kwargs):
            raise RuntimeError("/secret/path exploded")

        monkeypatch.setattr(app.state.engine, "sample", broken)
        response = client.post("/sample", json={"n": 1}, headers={"X-Request-ID": "bug-42"})
        metrics = client.get("/metrics").text
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error", "request_id": "bug-42"}
    assert response.headers["x-request-id"] == "bug-42"
    assert 'vae_http_requests_total{method="POST",route="/sample",status="500"}' in metrics


def test_a_request_past_its_deadline_gets_the_guards_504(make_settings, monkeypatch):
    app = create_app(make_settings(request_timeout_s=0.2))
    with TestClient(app) as client:

        async def stuck(*args, **kwargs):
            await asyncio.sleep(5)

        monkeypatch.setattr(app.state.engine, "sample", stuck)
        response = client.post("/sample", json={"n": 1})
    assert response.status_code == 504
    assert response.json() == {"detail": "request took longer than 0.2 s (VAE_REQUEST_TIMEOUT_S)"}


def test_inline_lone_batches_give_the_same_answers_as_the_thread(make_settings, serving, digit_png):
    """With one core (`VAE_INLINE_LONE_BATCHES=auto` there, `on` here) lone rows run on the event
    loop; the bytes must not depend on where the model ran, alone or in a burst."""

    async def answers(mode: str) -> tuple[bytes, list[bytes], dict]:
        async with serving(make_settings(inline_lone_batches=mode)) as client:
            lone = (await client.post("/sample", json={"n": 1, "seed": 11})).content
            burst = await asyncio.gather(
                *[client.post("/sample", json={"n": 1, "seed": s}) for s in range(12)]
            )
            files = {"file": ("7.png", digit_png, "image/png")}
            encoded = (await client.post("/encode", files=files)).json()
            return lone, [r.content for r in burst], encoded

    on, off = asyncio.run(answers("on")), asyncio.run(answers("off"))
    assert on[0] == off[0]
    assert on[1] == off[1] and len(set(on[1])) == 12
    assert on[2] == off[2]
