"""The real service on loopback, for the tests of what watches it (Prometheus, Grafana, k8s).

The service is started the way operators start it: the `vae-serve` entry point, read from this
repository's pyproject.toml (so a move of the module behind it does not break these tests),
serving the shipped model. An admin token mounts /admin/reload, so a failed reload can be
provoked and its series seen.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "monitoring-test-admin-token"
STARTUP_TIMEOUT_S = 180  # loading and warming the model on a busy two-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def entry_point_command(script: str) -> list[str]:
    """`python -c` calling what `[project.scripts]` names for `script` (as its wrapper does)."""
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"][script]
    module, function = target.split(":")
    code = f"import sys; from {module} import {function} as main; sys.exit(main())"
    return [sys.executable, "-c", code]


@dataclass
class Service:
    url: str
    process: subprocess.Popen
    log_path: Path
    routes: set[str] = field(default_factory=set)

    @property
    def host_port(self) -> str:
        return self.url.removeprefix("http://")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def _wait_until_ready(service: Service) -> None:
    """Polls /readyz until the model is loaded and warmed (or the process dies)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(f"vae-serve exited with {service.process.returncode}:\n{service.log()}")
        try:
            if httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"vae-serve was not ready within {STARTUP_TIMEOUT_S} s:\n{service.log()}")


@contextmanager
def running_service(folder: Path) -> Iterator[Service]:
    """`vae-serve` with the shipped model on 127.0.0.1 and a free port, ready to serve."""
    port = free_port()
    log_path = folder / "stderr.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "VAE_CHECKPOINT": str(REPO / "models" / "mnist-vae.pt"),
            "VAE_DEVICE": "cpu",
            "VAE_BACKEND": "torch",  # no ONNX export at start-up: the metrics are the same
            "VAE_ADMIN_TOKEN": ADMIN_TOKEN,
        }
    )
    command = [*entry_point_command("vae-serve"), "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stderr=log, stdout=log)
    running = Service(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_until_ready(running)
        openapi = httpx.get(f"{running.url}/openapi.json", timeout=10).json()
        running.routes = set(openapi["paths"])
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
