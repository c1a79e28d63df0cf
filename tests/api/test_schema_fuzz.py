"""Property-based fuzzing of the OpenAPI schema with schemathesis: no input may give a 5xx.

Every call carries the admin token, so `/admin/reload` is fuzzed past its auth check (bodies
and checkpoint paths); the API key is off, and the auth tests cover the 401s.

schemathesis' lazy pytest loader (`from_fixture`) does not work with this pytest, so each
operation's case strategy is driven by Hypothesis directly; the checks are schemathesis' own.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from app.main import create_app

EXAMPLES_PER_OPERATION = 40
ADMIN_TOKEN = "fuzz-admin"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def api_schema(make_settings):
    """The app's own /openapi.json; schemathesis runs the app's lifespan itself."""
    app = create_app(make_settings(api_key=None, admin_token=ADMIN_TOKEN))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_operation_is_fuzzed_without_a_server_error(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    statuses = {operation.path: fuzz(operation) for operation in operations}
    assert statuses["/admin/reload"] - {401}, "the admin route was only fuzzed as a 401"


def fuzz(operation) -> set[int]:
    """Calls `operation` with generated inputs (admin token on); fails on any 5xx. The statuses
    it saw come back, to show how far past validation and auth the inputs got."""
    statuses: set[int] = set()

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def no_server_error(case):
        response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error])
        statuses.add(response.status_code)

    no_server_error()
    return statuses
