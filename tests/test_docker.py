"""The Docker images and the compose stack, for real: build, run, health check, HTTP, teardown.

The test starts its own dockerd (no bridge, no NAT, host network only, its sockets in a temporary
folder, its images and layers in a cache folder kept for `LAYER_CACHE_MAX_AGE_S` so that a run
builds only the layers that changed), builds a stand-in for `python:3.11-slim` with debootstrap
(scripts/docker/), builds both project images on it from the one Dockerfile (the GPU image first,
then the `cpu` target, whose export stage is the GPU image's layers, reused from the cache), brings
up docker-compose.cpu.yml + docker-compose.test.yml, waits for the container's health check and
calls the API from the host. It measures each image's cold start (container start -> /readyz 200)
and holds the CPU image's answers to the GPU image's (which serves on the CPU here). It removes
the containers, volumes and image tags it made (their layers stay, as the cache) and stops the
daemon by its PID. It skips, saying why, only where no engine can be started (not root, no
dockerd/debootstrap) or the shipped checkpoint is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from harness.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "docker"
CHECKPOINT = ROOT / "models" / "mnist-vae.pt"
HEALTH_TIMEOUT_S = 180
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ADMIN_TOKEN = uuid.uuid4().hex
CPU_IMAGE_MAX_BYTES = 1_000_000_000  # 1 GB, as `docker image inspect` counts (uncompressed)
BOUND = 1e-4  # the backend bound: the CPU image's floats against the GPU image's
CACHE_DIR = Path(os.environ.get("VAE_CACHE_DIR") or Path.home() / ".cache" / "mnist-vae")
# The layer cache is started again from nothing after this long, so that every dependency is
# fetched and installed afresh at least that often and old layers do not pile up.
LAYER_CACHE_MAX_AGE_S = 3 * 24 * 3600

# The first test also pays for both image builds (about 6 min, longer when the machine is busy).
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1500)]


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


@contextlib.contextmanager
def layer_cache() -> Iterator[Path | None]:
    """The engine's data root kept between runs, held for this run; None while another run holds
    it (that run's engine owns it, so this one builds everything in its temporary folder)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    root = CACHE_DIR / "dockerd-data"
    with open(CACHE_DIR / "dockerd-data.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        stamp = root / "created"
        if not stamp.is_file() or time.time() - stamp.stat().st_mtime > LAYER_CACHE_MAX_AGE_S:
            reset_data_root(root)
        yield root


def reset_data_root(root: Path) -> None:
    """An empty data root, stamped with the time it was made (its age bounds the cache's)."""
    unmount_below(root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    (root / "created").touch()


def start_dockerd(state: Path, data_root: Path | None) -> subprocess.CompletedProcess[str]:
    args = [SCRIPTS / "start-dockerd.sh", state] + ([data_root] if data_root else [])
    return subprocess.run(args, capture_output=True, text=True)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    reason = why_no_engine()
    if reason:
        pytest.skip(f"no Docker engine can be started here: {reason}")
    if not CHECKPOINT.is_file():
        pytest.skip(f"no shipped checkpoint at {CHECKPOINT.relative_to(ROOT)} to put in the image")
    state = Path(tempfile.mkdtemp(prefix="vae-dockerd-"))
    with layer_cache() as data_root:
        started = start_dockerd(state, data_root)
        if started.returncode != 0 and data_root is not None:
            reset_data_root(data_root)  # a cache a killed daemon left unusable: start afresh
            started = start_dockerd(state, data_root)
        if started.returncode != 0:
            shutil.rmtree(state, ignore_errors=True)
            pytest.skip(f"no Docker engine can be started here:\n{started.stderr[-2000:]}")
        fields = dict(item.split("=", 1) for item in started.stdout.split())
        engine = Engine(host=fields["DOCKER_HOST"], pid=int(fields["DOCKERD_PID"]), state=state)
        try:
            # what a run that was killed left behind; the images stay, as the cache
            engine.docker("container", "prune", "--force", check=False)
            engine.docker("volume", "prune", "--force", check=False)
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


@dataclass
class Build:
    """What an image build needs: the stand-in base and the registry hosts."""

    base: str
    hosts: list[str]


@pytest.fixture(scope="module")
def build(engine: Engine, report: Callable[[str], None]) -> Build:
    """The stand-in base image, kept in the layer cache (a new import would be a new base)."""
    start = time.monotonic()
    base = engine.run(str(SCRIPTS / "build-base-image.sh")).strip()
    report(f"stand-in base image ready in {time.monotonic() - start:.0f} s")
    hosts = engine.run(
        str(SCRIPTS / "registry-hosts.sh"), env={**engine.env, "PYTHON": sys.executable}
    )
    return Build(base, hosts.split())


def build_image(engine: Engine, build: Build, report: Callable[[str], None], variant: str) -> str:
    """Builds the Dockerfile's `variant` target on the stand-in base and reports
    `<variant> image built in N s, X GB`."""
    tag = f"mnist-vae-{variant}:test-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    engine.docker("build", "--network", "host", *build.hosts, "--build-arg",
                  f"BASE_IMAGE={build.base}", "--target", variant, "-t", tag,
                  str(ROOT), timeout=1200)  # fmt: skip
    size = image_bytes(engine, tag)
    report(f"{variant} image built in {time.monotonic() - start:.0f} s, {size / 1e9:.2f} GB")
    return tag


def image_bytes(engine: Engine, tag: str) -> int:
    return int(engine.docker("image", "inspect", "--format", "{{.Size}}", tag))


@contextlib.contextmanager
def built_image(
    engine: Engine, build: Build, report: Callable[[str], None], target: str
) -> Iterator[str]:
    """`build_image`'s tag, removed afterwards (its layers stay, as the cache)."""
    tag = build_image(engine, build, report, target)
    try:
        yield tag
    finally:
        engine.docker("rmi", "--force", "--no-prune", tag, check=False)


@pytest.fixture(scope="module")
def gpu_image(engine: Engine, build: Build, report: Callable[[str], None]) -> Iterator[str]:
    """The full image (torch, CUDA wheels; runs on the CPU too), built first."""
    with built_image(engine, build, report, "gpu") as tag:
        yield tag


@pytest.fixture(scope="module")
def cpu_image(
    engine: Engine, build: Build, gpu_image: str, report: Callable[[str], None]
) -> Iterator[str]:
    """The small image (ONNX Runtime, no torch), built after the full one: its export stage
    takes the GPU image's layers from the cache."""
    with built_image(engine, build, report, "cpu") as tag:
        yield tag


@pytest.fixture(scope="module")
def image(cpu_image: str) -> str:
    """The image the compose CPU stack runs, and the health-check tests below use."""
    return cpu_image


@dataclass
class Stack:
    url: str
    container: str


@pytest.fixture(scope="module")
def stack(
    engine: Engine, image: str, gpu_image: str, report: Callable[[str], None]
) -> Iterator[Stack]:
    """docker-compose.cpu.yml + docker-compose.test.yml (host network), up and healthy.

    Compose v1 refuses published ports on the host network and an override cannot remove them,
    so the merged configuration is rendered first and written without `ports`.
    """
    port = free_port()
    env = {**engine.env, "VAE_CPU_IMAGE": image, "VAE_IMAGE": gpu_image,
           "VAE_TEST_PORT": str(port), "VAE_ADMIN_TOKEN": ADMIN_TOKEN,
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
    listing = engine.docker("exec", stack.container, "ls", "/srv/checkpoints/mnist-vae")
    assert {"manifest.json", "encode.onnx", "decode.onnx", "prior.npz"} <= set(listing.split())


def test_cpu_image_is_at_most_1_gb(engine: Engine, cpu_image: str) -> None:
    assert image_bytes(engine, cpu_image) <= CPU_IMAGE_MAX_BYTES


def test_cpu_image_serves_the_export_with_traces_and_without_torch(
    engine: Engine, stack: Stack
) -> None:
    for module in ("torch", "torchvision"):
        found = subprocess.run(
            ["docker", "exec", stack.container, "python", "-c", f"import {module}"],
            env=engine.env, capture_output=True, text=True,
        )  # fmt: skip
        assert found.returncode != 0 and "No module named" in found.stderr, module
    tracing = ["python", "-c", "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http"]
    found = subprocess.run(["docker", "exec", stack.container, *tracing],
                           env=engine.env, capture_output=True, text=True)  # fmt: skip
    assert found.returncode == 0, f"OTEL_* could not turn traces on:\n{found.stderr}"
    model = httpx.get(f"{stack.url}/model", timeout=10).json()
    assert model["artifact"]["kind"] == "onnx-export"
    assert model["artifact"]["runtime"].startswith("onnxruntime ")
    assert model["prior"]["digit_guide"]["active"]


def test_encode_answers_through_the_stack(stack: Stack) -> None:
    files = {"file": ("seven.png", example_png("7-0"), "image/png")}
    body = httpx.post(f"{stack.url}/encode", files=files, timeout=30).json()
    assert len(body["mu"]) == body["latent_dim"] == len(body["logvar"])


def test_the_open_inference_protocol_answers_through_the_stack(stack: Stack) -> None:
    model = httpx.get(f"{stack.url}/v2/models/mnist-vae-decoder", timeout=10).json()
    latent = model["inputs"][0]["shape"][1]
    infer = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [2, latent],
                         "data": [0.0] * (2 * latent)}]}  # fmt: skip
    response = httpx.post(f"{stack.url}/v2/models/mnist-vae-decoder/infer", json=infer, timeout=30)
    response.raise_for_status()
    [image] = response.json()["outputs"]
    assert image["shape"] == [2, 1, 32, 32] and len(image["data"]) == 2 * 32 * 32


def test_reload_refuses_a_torch_checkpoint_with_a_clear_4xx(engine: Engine, stack: Stack) -> None:
    engine.docker("cp", str(CHECKPOINT), f"{stack.container}:/srv/checkpoints/mnist-vae.pt")
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    url = f"{stack.url}/admin/reload"
    refused = httpx.post(url, json={"checkpoint": "mnist-vae.pt"}, headers=headers, timeout=60)
    assert refused.status_code == 409 and "vae-export" in refused.json()["detail"]
    again = httpx.post(
        url, json={"checkpoint": "mnist-vae/manifest.json"}, headers=headers, timeout=60
    )
    assert again.status_code == 200, again.text


def run_and_time_readiness(engine: Engine, image: str) -> tuple[str, str, float]:
    """Starts `image` on a free port; (container, url, seconds from `docker run` to the first
    /readyz 200)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    container = engine.docker("run", "--detach", "--network", "host", "--env", f"PORT={port}",
                              image).strip()  # fmt: skip
    while time.monotonic() - start < HEALTH_TIMEOUT_S:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return container, url, time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    logs = engine.docker("logs", "--tail", "30", container, check=False)
    engine.docker("rm", "--force", container, check=False)
    raise ContainerUnhealthy(f"{image} not ready after {HEALTH_TIMEOUT_S} s:\n{logs}")


def test_cold_starts_and_the_cpu_image_answers_as_the_gpu_image(
    engine: Engine, cpu_image: str, gpu_image: str, report: Callable[[str], None]
) -> None:
    """Cold start of each image (its first start, nothing cached), then the same requests to
    both: latents and float32 images within the backend bound."""
    containers = []
    try:
        urls = {}
        for variant, tag in (("cpu", cpu_image), ("gpu", gpu_image)):
            container, urls[variant], seconds = run_and_time_readiness(engine, tag)
            containers.append(container)
            report(f"{variant} image cold start (docker run -> /readyz 200) {seconds:.1f} s")
        for request in ({"n": 8, "seed": 3}, {"digits": [4, 2, 7], "seed": 5}):
            got, want = (
                httpx.post(f"{urls[v]}/sample?format=json", json=request, timeout=60).json()
                for v in ("cpu", "gpu")
            )
            assert np.abs(np.array(got["latents"]) - np.array(want["latents"])).max() <= BOUND
            z = np.array(want["latents"], np.float32)
            infer = {"inputs": [{"name": "z", "datatype": "FP32", "shape": list(z.shape),
                                 "data": z.ravel().tolist()}]}  # fmt: skip
            images = [
                httpx.post(f"{urls[v]}/v2/models/mnist-vae-decoder/infer", json=infer,
                           timeout=60).json()["outputs"][0]["data"]
                for v in ("cpu", "gpu")
            ]  # fmt: skip
            assert np.abs(np.array(images[0]) - np.array(images[1])).max() <= BOUND
        files = {"file": ("seven.png", example_png("7-0"), "image/png")}
        got, want = (
            httpx.post(f"{urls[v]}/encode", files=files, timeout=60).json() for v in ("cpu", "gpu")
        )
        assert np.abs(np.array(got["mu"]) - np.array(want["mu"])).max() <= BOUND
    finally:
        for container in containers:
            engine.docker("rm", "--force", container, check=False)


def example_png(example_id: str) -> bytes:
    return (ROOT / "app" / "images" / "example_digits" / f"{example_id}.png").read_bytes()


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
