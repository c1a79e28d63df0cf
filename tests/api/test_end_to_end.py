"""The real thing: `vae-serve` (uvicorn) in a subprocess on 127.0.0.1, called over loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_server import REPO, STARTUP_TIMEOUT_S, free_port


def vae_serve(*args: str, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "app.server.cli", *args]
    inherited = {k: v for k, v in os.environ.items() if k not in ("VAE_API_KEY", "VAE_ADMIN_TOKEN")}
    return subprocess.Popen(
        command, cwd=REPO, env={**inherited, **env}, stderr=subprocess.PIPE, text=True
    )


def wait_for_startup(server: subprocess.Popen) -> None:
    """Reads the server's log until uvicorn reports start-up, so no sleep-and-hope."""
    started = threading.Event()

    def watch() -> None:
        for line in server.stderr:
            if "Uvicorn running on" in line:  # bound: startup completes before the bind
                started.set()
        started.set()  # the process ended: let the caller find out why

    threading.Thread(target=watch, daemon=True).start()
    assert started.wait(STARTUP_TIMEOUT_S), "server did not start in time"
    assert server.poll() is None, "server exited during start-up"


@pytest.fixture(scope="module")
def server_url(tiny_checkpoint: Path) -> Iterator[str]:
    port = free_port()
    env = {"VAE_CHECKPOINT": str(tiny_checkpoint), "VAE_DEVICE": "cpu"}
    server = vae_serve("--host", "127.0.0.1", "--port", str(port), env=env)
    try:
        wait_for_startup(server)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


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
    server = vae_serve("--port", str(free_port()), env={"VAE_CHECKPOINT": str(path)})
    _, stderr = server.communicate(timeout=60)
    assert server.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("vae-serve: cannot serve:") and str(path) in lines[0]
    assert "Traceback" not in stderr


def test_invalid_setting_stops_startup_with_one_clear_line(tiny_checkpoint):
    env = {"VAE_CHECKPOINT": str(tiny_checkpoint), "VAE_MAX_BATCH_SIZE": "many"}
    server = vae_serve("--port", str(free_port()), env=env)
    _, stderr = server.communicate(timeout=60)
    assert server.returncode == 2
    assert stderr.strip() == (
        "vae-serve: invalid configuration: VAE_MAX_BATCH_SIZE: "
        "Input should be a valid integer, unable to parse string as an integer"
    )
