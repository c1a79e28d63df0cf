"""`docker-compose config` accepts the GPU stack and the CPU variant, and they stay in step.

docker-compose.yml reserves an NVIDIA GPU; docker-compose.cpu.yml is the same stack without the
reservation (compose v1 cannot remove a reservation in an override). These tests render both with
the installed compose (v1 `docker-compose` or the v2 plugin) and compare the results.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GPU_FILE = ROOT / "docker-compose.yml"
CPU_FILE = ROOT / "docker-compose.cpu.yml"
TEST_FILE = ROOT / "docker-compose.test.yml"
NVIDIA_GPU = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


COMPOSE = _compose_command()
pytestmark = pytest.mark.skipif(
    COMPOSE is None,
    reason="neither docker-compose (v1) nor the docker compose plugin (v2) is installed "
    "(scripts/system-deps.sh installs docker-compose on Debian)",
)


def render(*files: Path) -> dict[str, Any]:
    """The merged configuration, as compose itself resolves it (no daemon needed)."""
    return copy.deepcopy(_render(files))


@functools.cache
def _render(files: tuple[Path, ...]) -> dict[str, Any]:
    args = [*COMPOSE]
    for file in files:
        args += ["-f", str(file)]
    # Only PATH: the defaults in the files apply, whatever VAE_* the caller's shell exports.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = subprocess.run([*args, "config"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(args)} config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def gpu_reservations(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def normalise(device: dict[str, Any]) -> dict[str, Any]:
    return {**device, "count": int(device["count"])}


@pytest.mark.parametrize("service", ["api", "train"])
def test_gpu_stack_reserves_one_nvidia_gpu(service: str) -> None:
    config = render(GPU_FILE)
    assert [normalise(d) for d in gpu_reservations(config["services"][service])] == [NVIDIA_GPU]


def test_cpu_stack_reserves_no_device_and_runs_on_the_cpu() -> None:
    config = render(CPU_FILE)
    for name, service in config["services"].items():
        assert gpu_reservations(service) == [], f"{name} still reserves a GPU"
    assert config["services"]["api"]["environment"]["VAE_DEVICE"] == "cpu"
    assert "--device=cpu" in config["services"]["train"]["command"]


def test_cpu_stack_is_the_gpu_stack_without_the_gpu() -> None:
    """Apart from the reservation and the device, only the api's image differs: the small one
    (Dockerfile's `cpu` target), serving the export it carries; the trainer keeps the full image."""
    gpu, cpu = render(GPU_FILE), render(CPU_FILE)
    stripped = copy.deepcopy(gpu)
    for service in stripped["services"].values():
        service.pop("deploy", None)
    text = yaml.safe_dump(stripped).replace("--device=cuda", "--device=cpu")
    expected = yaml.safe_load(text)
    api, train = expected["services"]["api"], expected["services"]["train"]
    api["environment"] |= {
        "VAE_DEVICE": "cpu",
        "VAE_CHECKPOINT": "/srv/checkpoints/mnist-vae/manifest.json",
        "VAE_CHECKPOINT_DIR": "/srv/checkpoints",
        "VAE_DIGIT_GUIDE": "/srv/checkpoints/mnist-vae/digit-guide.onnx",
    }
    api["image"] = "mnist-vae-cpu:latest"
    train["build"] = api["build"]
    api["build"] = {**api["build"], "target": "cpu"}
    assert cpu == expected


def test_api_publishes_8000_with_health_check_restart_and_checkpoint_volume() -> None:
    api = render(GPU_FILE)["services"]["api"]
    assert any(str(p.get("target", p)).endswith("8000") for p in api["ports"])
    assert "readyz" in " ".join(api["healthcheck"]["test"])
    assert api["restart"] == "unless-stopped"
    assert api["environment"]["VAE_CHECKPOINT"].startswith("/srv/checkpoints/")
    assert any(str(v).startswith("checkpoints:/srv/checkpoints") for v in _volumes(api))


def test_train_runs_only_in_its_profile_and_exports_into_the_checkpoints_volume() -> None:
    config = render(GPU_FILE)
    train = config["services"]["train"]
    assert train["profiles"] == ["train"]
    assert "--export=/srv/checkpoints/mnist-vae.pt" in train["command"]
    assert any(str(v).startswith("checkpoints:/srv/checkpoints") for v in _volumes(train))


def test_no_file_declares_networks() -> None:
    """Compose networks create bridges on private ranges, which this deployment never uses."""
    for file in (GPU_FILE, CPU_FILE, TEST_FILE):
        text = yaml.safe_load(file.read_text())
        assert "networks" not in text, file.name
        assert all("networks" not in s for s in text["services"].values()), file.name


def test_test_override_puts_the_cpu_api_on_the_host_network() -> None:
    api = render(CPU_FILE, TEST_FILE)["services"]["api"]
    assert api["network_mode"] == "host"
    assert gpu_reservations(api) == []


def _volumes(service: dict[str, Any]) -> list[str]:
    """v1 renders volumes as `src:dst:rw` strings, v2 as dicts; both become `src:dst`."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out.append(f"{volume['source']}:{volume['target']}")
        else:
            out.append(volume)
    return out


MONITORING = ("prometheus", "grafana")


@pytest.mark.parametrize("file", [GPU_FILE, CPU_FILE], ids=["gpu", "cpu"])
def test_monitoring_runs_only_in_its_profile_on_the_host_network(file: Path) -> None:
    config = render(file)
    for name in MONITORING:
        service = config["services"][name]
        assert service["profiles"] == ["monitoring"], name
        assert service["network_mode"] == "host", name
        assert "ports" not in service, name  # the host network publishes nothing
        assert gpu_reservations(service) == [], name


def test_prometheus_is_the_official_image_and_loads_the_shipped_config_and_rules() -> None:
    prometheus = render(GPU_FILE)["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    mounts = {dst: Path(src) for src, dst in (v.split(":")[:2] for v in _volumes(prometheus))}
    shipped = ROOT / "deploy" / "prometheus"
    assert mounts["/etc/prometheus"] == shipped
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in prometheus["command"])
    config_in_container = Path(flags["config.file"])
    assert config_in_container.parent == Path("/etc/prometheus")
    config = yaml.safe_load((shipped / config_in_container.name).read_text())
    for rule_file in config["rule_files"]:  # relative to the config file, inside the mount
        assert (shipped / rule_file).is_file(), rule_file
    assert flags["web.listen-address"].startswith("127.0.0.1:")


def test_prometheus_scrapes_the_port_the_api_publishes() -> None:
    """Prometheus shares the host's network, so it reaches the api where compose publishes it."""
    api = render(GPU_FILE)["services"]["api"]
    published = {
        str(p["published"]) if isinstance(p, dict) else p.split(":")[0] for p in api["ports"]
    }
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    [static] = job["static_configs"]
    assert job["job_name"] == "mnist-vae"  # the job the alerts in rules.yml select
    assert {t.split(":")[1] for t in static["targets"]} == published
    assert all(t.startswith("127.0.0.1:") for t in static["targets"])


def test_grafana_reads_the_prometheus_beside_it_and_the_shipped_dashboard() -> None:
    services = render(GPU_FILE)["services"]
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert grafana["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    mounts = {dst: Path(src) for src, dst in (v.split(":")[:2] for v in _volumes(grafana))}
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [source] = datasources["datasources"]
    prometheus_flags = dict(
        arg.removeprefix("--").split("=", 1) for arg in services["prometheus"]["command"]
    )
    assert source["url"] == f"http://{prometheus_flags['web.listen-address']}"
    providers = yaml.safe_load((provisioning / "dashboards" / "mnist-vae.yml").read_text())
    [provider] = providers["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / "mnist-vae.json").is_file()
