"""`DirectRoute` (app/routes/direct.py): the hot routes' endpoint called with the request and its
path parameters, still matched, documented and error-handled like every route."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from app.errors import NotFound
from app.http.error_bodies import install_error_handlers
from app.routes.direct import DirectRoute


def _app(calls: list[str]) -> FastAPI:
    def dependency() -> None:
        calls.append("dependency")

    router = APIRouter(prefix="/v2", route_class=DirectRoute)

    @router.post("/models/{name}/infer")
    @router.post("/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        if name == "missing":
            raise NotFound(f"unknown model {name!r}")
        calls.append(f"{name}:{version}:{await request.body()!r}")
        return Response(b"ok")

    app = FastAPI()
    app.include_router(router, dependencies=[Depends(dependency)])
    install_error_handlers(app)
    return app


def test_the_endpoint_gets_the_request_and_the_path_parameters_and_no_dependency_runs():
    calls: list[str] = []
    client = TestClient(_app(calls))
    assert client.post("/v2/models/a/infer", content=b"x").text == "ok"
    assert client.post("/v2/models/a/versions/7/infer", content=b"y").text == "ok"
    assert calls == ["a:None:b'x'", "a:7:b'y'"]


def test_its_errors_and_wrong_methods_are_answered_by_the_apps_handlers():
    client = TestClient(_app([]))
    missing = client.post("/v2/models/missing/infer")
    assert missing.status_code == 404 and missing.json() == {"error": "unknown model 'missing'"}
    wrong_method = client.get("/v2/models/a/infer")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_it_is_documented_like_any_route():
    paths = _app([]).openapi()["paths"]
    parameters = paths["/v2/models/{name}/versions/{version}/infer"]["post"]["parameters"]
    assert {p["name"] for p in parameters} == {"name", "version"}


JSON = {"content-type": "application/json"}


class Order(BaseModel):
    n: int = Field(ge=1)


def _ordering_app() -> FastAPI:
    router = APIRouter(route_class=DirectRoute)

    @router.post("/orders/{shop}")
    async def order(
        request: Request, shop: str, body: Order, limit: int = 10, note: str | None = None
    ) -> Response:
        return Response(f"{shop} {body.n} {limit} {note}")

    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    return app


def test_the_json_body_and_the_query_parameters_are_filled_and_documented():
    app = _ordering_app()
    client = TestClient(app)
    assert client.post("/orders/a", json={"n": 2}).text == "a 2 10 None"
    assert client.post("/orders/a?limit=3&note=hi", json={"n": 2}).text == "a 2 3 hi"
    operation = app.openapi()["paths"]["/orders/{shop}"]["post"]
    assert {p["name"]: p["in"] for p in operation["parameters"]} == {
        "shop": "path",
        "limit": "query",
        "note": "query",
    }
    body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/Order"}


@pytest.mark.parametrize(
    ("url", "body", "headers", "loc"),
    [
        ("/orders/a", b'{"n": 0}', {"content-type": "application/json"}, ["body", "n"]),
        ("/orders/a", b'{"n": ', {"content-type": "application/json"}, ["body"]),
        ("/orders/a", b"", {"content-type": "application/json"}, ["body"]),
        ("/orders/a", b'{"n": 1}', {"content-type": "text/plain"}, ["body"]),
        (
            "/orders/a?limit=x",
            b'{"n": 1}',
            {"content-type": "application/json"},
            ["query", "limit"],
        ),
    ],
    ids=["invalid field", "not JSON", "no body", "not said to be JSON", "invalid query"],
)
def test_invalid_input_is_fastapis_422(url, body, headers, loc):
    response = TestClient(_ordering_app()).post(url, content=body, headers=headers)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == loc and error["msg"] and "input" not in error


def test_an_endpoint_that_would_need_fastapi_to_fill_a_parameter_is_refused_at_start():
    router = APIRouter(route_class=DirectRoute)

    async def needs_a_query(request: Request, limit: int) -> Response:
        return Response()

    with pytest.raises(TypeError, match="takes `request`"):
        router.add_api_route("/items/{name}", needs_a_query, methods=["GET"])


def test_a_body_in_several_messages_is_read_whole():
    """The route reads its body from `receive` itself: every message of it, not just the first."""
    chunks = [b'{"n"', b": 3", b"}"]
    sent: list[dict] = []

    async def call() -> None:
        messages = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]

        async def receive() -> dict:
            return messages.pop(0)

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/orders/a",
            "raw_path": b"/orders/a",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("test", 80),
        }
        await _ordering_app()(scope, receive, send)

    asyncio.run(call())
    assert sent[0]["status"] == 200
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"a 3 10 None"
