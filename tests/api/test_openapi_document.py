"""The OpenAPI document declares what the service asks and answers (issue 26, point 9).

Security appears only where a token is configured, each route documents the 401 only where it can
answer one, and the models' "exactly one of" and "at most one of" rules are in their JSON schemas.
`test_schema_fuzz.py` then holds the service to the document with schemathesis.
"""

from __future__ import annotations

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from app.main import create_app
from app.schemas import DecodeRequest, Endpoint, SampleRequest

KEY = "doc-key"
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"}


def document(make_settings, **secrets) -> dict:
    """The app's /openapi.json, fetched as a client would (with the key, when there is one)."""
    headers = {"Authorization": f"Bearer {KEY}"} if secrets.get("api_key") else {}
    with TestClient(create_app(make_settings(**secrets))) as client:
        response = client.get("/openapi.json", headers=headers)
    assert response.status_code == 200
    return response.json()


def operations(doc: dict) -> list[tuple[str, dict]]:
    return [(path, op) for path, item in doc["paths"].items() for op in item.values()]


def test_without_secrets_nothing_asks_for_a_token(make_settings):
    doc = document(make_settings)
    assert "securitySchemes" not in doc.get("components", {})
    for path, op in operations(doc):
        assert "security" not in op, path
        assert "401" not in op["responses"], path


def test_the_admin_token_is_asked_only_on_the_admin_routes(make_settings):
    doc = document(make_settings, admin_token="adm")
    assert set(doc["components"]["securitySchemes"]) == {"adminToken"}
    for path, op in operations(doc):
        admin = path.startswith("/admin/")
        assert (op.get("security") == [{"adminToken": []}]) == admin, path
        assert ("401" in op["responses"]) == admin, path


def test_with_both_each_guarded_route_asks_for_its_own_token(make_settings):
    doc = document(make_settings, api_key=KEY, admin_token="adm")
    assert set(doc["components"]["securitySchemes"]) == {"apiKey", "adminToken"}
    for path, op in operations(doc):
        if path in OPEN_PATHS:
            assert "security" not in op and "401" not in op["responses"], path
            continue
        wanted = "adminToken" if path.startswith("/admin/") else "apiKey"
        assert op["security"] == [{wanted: []}], path
        assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"], path


def test_every_4xx_and_5xx_is_documented_with_its_body(make_settings):
    doc = document(make_settings, api_key=KEY, admin_token="adm")
    for path, op in operations(doc):
        for status, response in op["responses"].items():
            if status >= "400" and path not in OPEN_PATHS:
                name = response["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
                if path == "/v2" or path.startswith("/v2/"):
                    assert name == "ProtocolErrorBody", (path, status)
                else:
                    assert name == ("InvalidInputBody" if status == "422" else "ErrorBody")
            if status == "503" and path not in OPEN_PATHS:
                assert response["headers"]["Retry-After"]["required"], path


@pytest.mark.parametrize(
    "model, body",
    [
        (DecodeRequest, {"z": [0.0]}),
        (DecodeRequest, {"zs": [[0.0]]}),
        (DecodeRequest, {"z": [0.0], "zs": None}),
        (DecodeRequest, {"z": None, "zs": [[0.0]]}),
        (DecodeRequest, {"z": [0.0], "zs": [[0.0]]}),
        (DecodeRequest, {}),
        (DecodeRequest, {"z": None, "zs": None}),
        (Endpoint, {"z": [1.0]}),
        (Endpoint, {"example": "3-0"}),
        (Endpoint, {"example": "3-0", "z": None}),
        (Endpoint, {"z": [1.0], "example": "3-0"}),
        (Endpoint, {}),
        (SampleRequest, {}),
        (SampleRequest, {"digit": 3}),
        (SampleRequest, {"digits": [3, 4]}),
        (SampleRequest, {"digit": 3, "digits": None}),
        (SampleRequest, {"digit": None, "digits": [3]}),
        (SampleRequest, {"digit": 3, "digits": [3]}),
    ],
)
def test_the_schema_states_the_one_of_rules(model: type[BaseModel], body: dict):
    """The JSON schema (so the OpenAPI document) accepts a body exactly when the model does."""
    try:
        model.model_validate(body)
        accepted = True
    except ValidationError:
        accepted = False
    assert jsonschema_rs.validator_for(model.model_json_schema()).is_valid(body) == accepted
