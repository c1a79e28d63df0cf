"""The real thing: `vae-serve` (uvicorn) in a subprocess on 127.0.0.1, called over loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.live_server import REPO, VAE_SERVE, LiveServer, server_env
from harness.processes import free_port


def failed_start(checkpoint: Path, **overrides: str) -> subprocess.CompletedProcess:
    """`vae-serve` that should refuse to start: its exit status and what it wrote to stderr."""
    command = [*VAE_SERVE, "--port", str(free_port())]
    env = server_env(checkpoint, **overrides)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def server_url(tiny_checkpoint: Path) -> Iterator[str]:
    with LiveServer(tiny_checkpoint) as server:
        yield server.url


def test_real_server_answers_every_kind_of_request(server_url, digit_png):
    with httpx.Client(base_url=server_url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json() == {"status": "ready"}
        sample = client.post("/sample", json={"n": 4, "seed": 9})
        assert sample.headers["content-type"] == "image/png" and sample.headers["x-request-id"]
        files = {"file": ("7.png", digit_png, "image/png")}
        assert client.post("/reconstruct", files=files).status_code == 200
        assert len(client.get("/encode", params={"example": "7-0"}).json()["mu"]) == 8
        assert client.post("/sample", json={"n": 0}).status_code == 422
        assert "vae_batch_size" in client.get("/metrics").text


def test_real_server_serves_concurrent_clients(server_url):
    import asyncio

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server_url, timeout=30) as client:
            responses = await asyncio.gather(
                *[client.post("/sample", json={"n": 1, "seed": i}) for i in range(50)]
            )
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 50


@pytest.mark.parametrize("content", [None, b"definitely not a checkpoint"])
def test_bad_checkpoint_stops_startup_with_one_clear_line(tmp_path, content):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    result = failed_start(path)
    stderr = result.stderr
    assert result.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("vae-serve: cannot serve:") and str(path) in lines[0]
    assert "Traceback" not in stderr


def test_invalid_setting_stops_startup_with_one_clear_line(tiny_checkpoint):
    result = failed_start(tiny_checkpoint, VAE_MAX_BATCH_SIZE="many")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "vae-serve: invalid configuration: VAE_MAX_BATCH_SIZE: "
        "Input should be a valid integer, unable to parse string as an integer"
    )
