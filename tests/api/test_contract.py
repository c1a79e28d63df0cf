"""The API's contract at its edges (issue 12, problem 5): auth everywhere it should be, JSON
errors, strict bodies, HEAD and 405."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app

KEY = "contract-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed(make_settings):
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        yield client


@pytest.mark.parametrize(
    "path", ["/docs", "/redoc", "/openapi.json", "/", "/index.html", "/model", "/no-such-page"]
)
def test_with_a_key_docs_and_the_web_page_need_it_too(keyed, path):
    refused = keyed.get(path)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert "API key" in refused.json()["detail"]
    assert keyed.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert keyed.get(path, headers=AUTH).status_code in (200, 404)


def test_a_route_level_401_also_says_bearer(keyed):
    response = keyed.post("/sample", json={"n": 1})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_readiness_and_metrics_stay_open(keyed, path):
    assert keyed.get(path).status_code == 200


def test_metrics_show_no_filesystem_path(client, settings):
    text = client.get("/metrics").text
    assert 'checkpoint="model.pt"' in text
    assert str(settings.checkpoint.parent) not in text


@pytest.mark.parametrize(
    "body",
    [{"n": True}, {"n": "16"}, {"n": 2.0}, {"n": 1, "seed": "7"}, {"n": 1, "temperature": "1"}],
)
def test_request_bodies_are_strictly_typed(client, body):
    assert client.post("/sample", json=body).status_code == 422


def test_integers_are_still_valid_floats(client):
    assert client.post("/sample", json={"n": 1, "temperature": 1}).status_code == 200
    assert client.post("/decode", json={"z": [0] * 8}).status_code == 200


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/model", "/examples", "/examples/1-0.png"]
)
def test_head_works_wherever_get_does(client, path):
    get, head = client.get(path), client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_head_on_the_web_page(client):
    assert client.head("/").status_code == 200


@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("TRACE", "/healthz", "GET, HEAD"),
        ("DELETE", "/sample", "POST"),
        ("PUT", "/examples/1-0.png", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("PATCH", "/encode", "GET, POST, HEAD"),
    ],
)
def test_unsupported_methods_on_known_routes_get_405_with_allow(client, method, path, allow):
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert "not allowed" in response.json()["detail"]


def test_unknown_paths_are_still_404_json(client):
    for method in ("GET", "POST", "DELETE"):
        response = client.request(method, "/no-such-route")
        assert response.status_code == 404
        assert response.json()["detail"]


def test_the_image_query_documents_its_real_limit(client):
    schema = client.get("/openapi.json").json()
    parameters = schema["paths"]["/encode"]["get"]["parameters"]
    image = next(p for p in parameters if p["name"] == "image")
    assert "48 KB" in image["description"]
    assert image["schema"]["anyOf"][0]["maxLength"] == 65535
