"""The real service on loopback, for the tests of what watches it (Prometheus, Grafana, k8s).

The service is started the way operators start it: the `vae-serve` entry point, read from this
repository's pyproject.toml (so a move of the module behind it does not break these tests),
serving the shipped model. An admin token mounts /admin/reload, so a failed reload can be
provoked and its series seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from harness.live_server import REPO, LiveServer, entry_point_command

ADMIN_TOKEN = "monitoring-test-admin-token"


@dataclass(frozen=True)
class Service:
    """The running service and the routes its OpenAPI document lists."""

    server: LiveServer
    routes: frozenset[str]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def host_port(self) -> str:
        return self.server.host_port


@contextmanager
def running_service(folder: Path) -> Iterator[Service]:
    """`vae-serve` with the shipped model on 127.0.0.1 and a free port, ready to serve; its
    stderr is also kept in `folder`/stderr.log."""
    with LiveServer(
        REPO / "models" / "mnist-vae.pt",
        command=entry_point_command("vae-serve"),
        ready=True,
        log_file=folder / "stderr.log",
        PYTHONPATH=str(REPO),
        VAE_BACKEND="torch",  # no ONNX export at start-up: the metrics are the same
        VAE_ADMIN_TOKEN=ADMIN_TOKEN,
    ) as server:
        openapi = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
        yield Service(server, frozenset(openapi["paths"]))


def exercise(service: Service, samples: int = 5) -> None:
    """Traffic that puts every kind of series on /metrics: inference on each batched
    operation, a 404, and a reload refused with 409 (a classifier is no VAE checkpoint)."""
    with httpx.Client(base_url=service.url, timeout=60) as client:
        example = client.get("/examples").json()["examples"][0]  # a real MNIST test digit
        digit = client.get(example["url"]).content
        for seed in range(samples):
            assert client.post("/sample", json={"n": 2, "seed": seed}).status_code == 200
        files = {"file": ("7.png", digit, "image/png")}
        assert client.post("/reconstruct", files=files).status_code == 200
        assert client.get("/no-such-page").status_code == 404
        refused = client.post(
            "/admin/reload",
            json={"checkpoint": "mnist-classifier.pt"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert refused.status_code == 409, refused.text


@dataclass(frozen=True)
class Exported:
    """What one scrape of /metrics holds: sample names and the label names of each."""

    labels: dict[str, frozenset[str]]
    label_values: dict[str, dict[str, frozenset[str]]]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.labels)


def scrape(service: Service) -> Exported:
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    labels: dict[str, set[str]] = {}
    values: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            for key, value in sample.labels.items():
                values.setdefault(sample.name, {}).setdefault(key, set()).add(value)
    return Exported(
        {name: frozenset(keys) for name, keys in labels.items()},
        {n: {k: frozenset(v) for k, v in kv.items()} for n, kv in values.items()},
    )
