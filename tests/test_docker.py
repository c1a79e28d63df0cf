"""The Docker image and the compose stack, for real: build, run, health check, HTTP, teardown.

The test starts its own dockerd (no bridge, no NAT, host network only, all state in a temporary
folder), builds a stand-in for `python:3.11-slim` with debootstrap (scripts/docker/), builds the
project image on it, brings up docker-compose.cpu.yml + docker-compose.test.yml, waits for the
container's health check and calls the API from the host. It removes the containers, volumes and
images it made and stops the daemon by its PID. It skips, saying why, only where no engine can be
started (not root, no dockerd/debootstrap) or the shipped checkpoint is missing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "docker"
CHECKPOINT = ROOT / "models" / "mnist-vae.pt"
HEALTH_TIMEOUT_S = 180
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The first test also pays for the image build (about 3 min, longer when the machine is busy).
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]


class ContainerUnhealthy(AssertionError):
    """A container exited, or its health check failed, before it reported healthy."""


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Prints timings and sizes to the terminal, past pytest's output capture."""
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def write(message: str) -> None:
        with capture.global_and_fixture_disabled():
            print(f"\n[docker] {message}", flush=True)

    return write


@dataclass
class Engine:
    """A dockerd this test started, reached through its own socket."""

    host: str
    pid: int
    state: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}

    def run(self, *args: str, check: bool = True, timeout: float = 600, **kw) -> str:
        result = subprocess.run(
            args, env=kw.pop("env", self.env), capture_output=True, text=True,
            timeout=timeout, **kw,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")  # fmt: skip
        return result.stdout

    def docker(self, *args: str, **kw) -> str:
        return self.run("docker", *args, **kw)


def why_no_engine() -> str | None:
    if os.geteuid() != 0:
        return "dockerd and debootstrap need root"
    missing = [
        t for t in ("dockerd", "docker", "docker-compose", "debootstrap") if not shutil.which(t)
    ]
    if missing:
        return (
            f"not installed: {', '.join(missing)} (scripts/system-deps.sh installs them on Debian)"
        )
    return None


def wait_healthy(engine: Engine, container: str, timeout: float = HEALTH_TIMEOUT_S) -> float:
    """Seconds until Docker reports the container healthy; raises if it exits or turns unhealthy."""
    start = time.monotonic()
    while True:
        state = json.loads(engine.docker("inspect", "--format", "{{json .State}}", container))
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return time.monotonic() - start
        failed = state["Status"] in ("exited", "dead") or health == "unhealthy"
        if failed or time.monotonic() - start > timeout:
            logs = subprocess.run(
                ["docker", "logs", "--tail", "30", container], env=engine.env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            ).stdout  # fmt: skip
            probes = (state.get("Health") or {}).get("Log", [])[-2:]
            raise ContainerUnhealthy(
                f"container {container[:12]}: status {state['Status']}, exit code "
                f"{state['ExitCode']}, health {health} after {time.monotonic() - start:.0f} s\n"
                f"last probes: {probes}\nlogs:\n{logs}"
            )
        time.sleep(1)


def fetch_png(response: httpx.Response) -> Image.Image:
    """The decoded image of a successful PNG response; raises on any other status or body."""
    response.raise_for_status()
    assert response.headers["content-type"] == "image/png", response.headers
    assert response.content.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    reason = why_no_engine()
    if reason:
        pytest.skip(f"no Docker engine can be started here: {reason}")
    if not CHECKPOINT.is_file():
        pytest.skip(f"no shipped checkpoint at {CHECKPOINT.relative_to(ROOT)} to put in the image")
    state = Path(tempfile.mkdtemp(prefix="vae-dockerd-"))
    started = subprocess.run([SCRIPTS / "start-dockerd.sh", state], capture_output=True, text=True)
    if started.returncode != 0:
        shutil.rmtree(state, ignore_errors=True)
        pytest.skip(f"no Docker engine can be started here:\n{started.stderr[-2000:]}")
    fields = dict(item.split("=", 1) for item in started.stdout.split())
    engine = Engine(host=fields["DOCKER_HOST"], pid=int(fields["DOCKERD_PID"]), state=state)
    try:
        yield engine
    finally:
        os.kill(engine.pid, signal.SIGTERM)
        for _ in range(60):
            try:
                os.kill(engine.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            os.kill(engine.pid, signal.SIGKILL)
        unmount_below(state)
        shutil.rmtree(state, ignore_errors=True)


def unmount_below(folder: Path) -> None:
    """Unmounts what the daemon left mounted (its default network namespace), deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(f"{folder}/")), reverse=True):
        subprocess.run(["umount", target], capture_output=True)


@pytest.fixture(scope="module")
def image(engine: Engine, report: Callable[[str], None]) -> Iterator[str]:
    """The project image, built on the stand-in base; removed (with the base) afterwards."""
    tag = f"mnist-vae:test-{uuid.uuid4().hex[:8]}"
    base = f"mnist-vae-base:test-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    engine.run(str(SCRIPTS / "build-base-image.sh"), base)
    report(f"stand-in base image ready in {time.monotonic() - start:.0f} s")
    hosts = engine.run(
        str(SCRIPTS / "registry-hosts.sh"), env={**engine.env, "PYTHON": sys.executable}
    )
    start = time.monotonic()
    try:
        engine.docker("build", "--network", "host", *hosts.split(), "--build-arg",
                      f"BASE_IMAGE={base}", "-t", tag, str(ROOT))  # fmt: skip
        size = int(engine.docker("image", "inspect", "--format", "{{.Size}}", tag))
        report(f"project image built in {time.monotonic() - start:.0f} s, {size / 1e9:.2f} GB")
        yield tag
    finally:
        engine.docker("rmi", "--force", tag, base, check=False)
        engine.docker("image", "prune", "--force", check=False)


@dataclass
class Stack:
    url: str
    container: str


@pytest.fixture(scope="module")
def stack(engine: Engine, image: str, report: Callable[[str], None]) -> Iterator[Stack]:
    """docker-compose.cpu.yml + docker-compose.test.yml (host network), up and healthy.

    Compose v1 refuses published ports on the host network and an override cannot remove them,
    so the merged configuration is rendered first and written without `ports`.
    """
    port = free_port()
    env = {**engine.env, "VAE_IMAGE": image, "VAE_TEST_PORT": str(port),
           "COMPOSE_PROJECT_NAME": f"vaetest{uuid.uuid4().hex[:8]}"}  # fmt: skip
    rendered = yaml.safe_load(
        engine.run("docker-compose", "-f", str(ROOT / "docker-compose.cpu.yml"),
                   "-f", str(ROOT / "docker-compose.test.yml"), "config", env=env)
    )  # fmt: skip
    rendered["services"]["api"].pop("ports", None)
    compose_file = engine.state / "compose.yml"
    compose_file.write_text(yaml.safe_dump(rendered))
    compose = ("docker-compose", "--project-directory", str(ROOT), "-f", str(compose_file))
    try:
        engine.run(*compose, "up", "--detach", "--no-build", "api", env=env)
        container = engine.run(*compose, "ps", "-q", "api", env=env).strip()
        report(f"compose stack healthy after {wait_healthy(engine, container):.0f} s")
        yield Stack(url=f"http://127.0.0.1:{port}", container=container)
    finally:
        engine.run(*compose, "down", "--volumes", "--remove-orphans", env=env, check=False)


def test_readyz_answers_from_the_host(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/readyz", timeout=10).status_code == 200


def test_sample_returns_a_png_grid(stack: Stack) -> None:
    response = httpx.post(f"{stack.url}/sample", json={"n": 16, "seed": 0}, timeout=30)
    image = fetch_png(response)
    assert image.width >= 28 and image.height >= 28


def test_reconstruct_returns_a_png(stack: Stack) -> None:
    digit = Image.new("L", (28, 28))
    digit.paste(255, (12, 4, 16, 24))  # a "1"
    upload = io.BytesIO()
    digit.save(upload, format="PNG")
    files = {"file": ("one.png", upload.getvalue(), "image/png")}
    image = fetch_png(httpx.post(f"{stack.url}/reconstruct", files=files, timeout=30))
    assert image.width >= 28 and image.height >= 28


def test_service_runs_as_a_non_root_user(engine: Engine, stack: Stack) -> None:
    assert engine.docker("exec", stack.container, "id", "-u").strip() != "0"
    status = engine.docker("exec", stack.container, "cat", "/proc/1/status")
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1] != "0", uid_line


def test_image_holds_no_compiler_tests_or_dataset(engine: Engine, stack: Stack) -> None:
    script = (
        "for tool in gcc cc g++ c++ make; do command -v $tool; done; "
        "ls -d /src /srv/tests /srv/data/* 2>/dev/null; "
        "find / -xdev \\( -name 'test_docker.py' -o -name 'conftest.py' -path '*/srv/*' "
        "-o -iname '*ubyte*' -o -name 'mnist.pkl.gz' -o -name 'MNIST' \\) -print 2>/dev/null; true"
    )
    found = engine.docker("exec", stack.container, "sh", "-c", script).split()
    assert found == [], f"the image should not contain: {found}"


def test_checkpoint_volume_is_seeded_from_the_image(engine: Engine, stack: Stack) -> None:
    listing = engine.docker("exec", stack.container, "ls", "/srv/checkpoints")
    assert "mnist-vae.pt" in listing.split()


def test_an_image_whose_command_crashes_is_reported_unhealthy(engine: Engine, image: str) -> None:
    broken = f"{image}-crashes"
    dockerfile = f'FROM {image}\nCMD ["python", "-c", "raise SystemExit(3)"]\n'
    engine.docker("build", "-t", broken, "-", input=dockerfile)
    container = engine.docker("run", "--detach", "--network", "host", broken).strip()
    try:
        with pytest.raises(ContainerUnhealthy, match="exit code 3"):
            wait_healthy(engine, container, timeout=60)
    finally:
        engine.docker("rm", "--force", container, check=False)
        engine.docker("rmi", "--force", broken, check=False)


def test_a_server_without_readyz_turns_unhealthy_and_fails_the_http_checks(
    engine: Engine, image: str
) -> None:
    port = free_port()
    container = engine.docker(
        "run", "--detach", "--network", "host", "--env", f"PORT={port}",
        "--health-interval", "1s", "--health-retries", "2", "--health-start-period", "1s",
        image, "python", "-m", "http.server", "--bind", "127.0.0.1", str(port),
    ).strip()  # fmt: skip
    try:
        with pytest.raises(ContainerUnhealthy, match="health unhealthy"):
            wait_healthy(engine, container, timeout=60)
        with pytest.raises(httpx.HTTPStatusError):
            fetch_png(httpx.post(f"http://127.0.0.1:{port}/sample", json={"n": 1}, timeout=10))
    finally:
        engine.docker("rm", "--force", container, check=False)
