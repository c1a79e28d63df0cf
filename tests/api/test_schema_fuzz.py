"""Property-based testing of the OpenAPI document with schemathesis: the service answers as it says.

Every operation is called with generated inputs, valid ones and (where it takes any input to spoil)
invalid ones, and every answer is held to the document by schemathesis' own checks: no 5xx, and a
documented status, content type, headers and body. Twice: without `VAE_API_KEY` (the document then
declares no security but the admin token's) and with it (each call carries the key, or under
`/admin` the admin token, and each valid case is sent once more with a wrong key, which must be a
documented 401). An admin token is set both times, so `/admin/reload` is fuzzed past its check.

The budget is fixed and Hypothesis derandomized without an example database, so every run sends
the same cases: the test cannot flake, and takes about half a minute on two cores.

schemathesis' lazy pytest loader (`from_fixture`) does not work with this pytest, so each
operation's case strategy is driven by Hypothesis directly; the checks are schemathesis' own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from models.checkpoint import file_sha256

VALID_EXAMPLES = 15  # per operation
INVALID_EXAMPLES = 8  # per operation that takes a body, a query or a key
API_KEY = "fuzz-key"
ADMIN_TOKEN = "fuzz-admin"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"}


@pytest.fixture(scope="module", params=[None, API_KEY], ids=["without-api-key", "with-api-key"])
def api_schema(request, make_settings):
    """The app's own /openapi.json; schemathesis runs the app's lifespan itself."""
    key = request.param
    app = create_app(make_settings(api_key=key, admin_token=ADMIN_TOKEN))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers), key


@pytest.fixture(scope="module")
def served_model(tiny_checkpoint) -> dict[str, str]:
    """The `/v2/models/{name}/versions/{version}` of the served decoder: random names only
    reach the 404, so each such operation is also fuzzed on this one."""
    return {"name": "mnist-vae-decoder", "version": file_sha256(tiny_checkpoint)[:12]}


def test_every_operation_answers_as_documented(api_schema, served_model):
    schema, key = api_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 24
    statuses = {operation.label: fuzz(operation, key, served_model) for operation in operations}
    for operation in operations:
        guarded = key is not None or operation.path.startswith("/admin")
        if guarded and operation.path not in OPEN_PATHS:
            seen = set(statuses[operation.label])
            assert 401 in seen and seen - {401}, f"{operation.label} answered only {seen}"


def fuzz(operation, key: str | None, served_model: dict[str, str]) -> Counter[int]:
    """Calls `operation` with generated inputs, each answer checked against the document (with
    `key` set, also without it). The statuses it saw come back, to show how far past validation
    and auth the inputs got."""
    admin = operation.path.startswith("/admin")
    token = ADMIN_TOKEN if admin else key
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    guarded = bool(token) and operation.path not in OPEN_PATHS
    statuses: Counter[int] = Counter()

    def check(case, mode: GenerationMode) -> None:
        statuses[case.call_and_validate(headers=auth, checks=CHECKS).status_code] += 1
        if guarded and mode is GenerationMode.POSITIVE:
            wrong = {"Authorization": "Bearer not-the-key"}
            refused = case.call_and_validate(headers=wrong, checks=CHECKS)
            assert refused.status_code == 401, refused.text
            statuses[401] += 1

    generate(operation, GenerationMode.POSITIVE, VALID_EXAMPLES, check)
    if _takes_input(operation.definition.raw):
        generate(operation, GenerationMode.NEGATIVE, INVALID_EXAMPLES, check)
    served = {k: v for k, v in served_model.items() if f"{{{k}}}" in operation.path}
    if served:
        generate(operation, GenerationMode.POSITIVE, VALID_EXAMPLES, check, served)
    return statuses


def generate(
    operation,
    mode: GenerationMode,
    examples: int,
    check: Callable,
    path_parameters: dict[str, str] | None = None,
) -> None:
    """`check(case, mode)` on `examples` cases of `mode`, the same ones every run."""

    @given(case=operation.as_strategy(mode, path_parameters=path_parameters))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def conforms(case):
        check(case, mode)

    conforms()


def _takes_input(definition: dict[str, Any]) -> bool:
    """Whether an operation has anything to make invalid (else negative generation is
    unsatisfiable): a body, a query parameter, or a declared key. (Path parameters and the one
    header parameter are plain strings: nothing is not one.)"""
    parameters = definition.get("parameters", [])
    return bool(
        definition.get("requestBody")
        or definition.get("security")
        or any(p["in"] == "query" for p in parameters)
    )
