"""Fixtures: the real service on loopback (tests/monitoring/live_service.py) and its /metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from live_service import Exported, Service, exercise, running_service, scrape


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("vae-serve")) as running:
        yield running


@pytest.fixture(scope="session")
def exported(service: Service) -> Exported:
    """The service's /metrics after traffic of every kind."""
    exercise(service)
    return scrape(service)
