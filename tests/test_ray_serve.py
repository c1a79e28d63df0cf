"""Ray Serve on two Ray nodes of this machine: both replicas answer, one node dies, service goes on.

A head and a worker are started with `ray start --block`, each in its own session and temp dir, on
its own loopback address, with one CPU, a small object store and one `vae_slot` custom resource.
The deployment asks for one slot per replica, so its two replicas land on different nodes. It is
deployed with `serve run` from the shipped `deploy/ray/serve.yaml`, adjusted for the test (tiny
checkpoint, a free port, two replicas). Each response names its node (`X-Ray-Node-IP`: every node
has its own loopback address), which is how the test knows who answered. Then the worker node is
killed (all of its processes, like a machine that dies): requests keep being answered (a failed
one is retried and counted, none is dropped), and once a fresh worker node joins, the lost
replica comes back on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from live_server import free_port

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -e '.[ray]'")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SLOT = "vae_slot"
# Each node on its own loopback address (Ray swaps a literal 127.0.0.1 for the machine's outward
# address, so that one is avoided): all traffic stays on this machine's loopback.
HEAD_IP, WORKER_IP, NEW_WORKER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
START_TIMEOUT_S = 90
# Ray asks the GCS about a node's health every second and declares it dead after 3 misses.
HEAD_SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Ray's workers start their own sessions, so no killpg)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class RayNode:
    """One `ray start --block` process and everything it starts, killed together."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.temp_dir = tempfile.mkdtemp(prefix=f"ray-{name}-", dir="/tmp")  # short socket paths
        command = [str(BIN / "ray"), "start", "--block", "--temp-dir", self.temp_dir, *args]
        command += ["--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", "100000000"]
        command += ["--resources", json.dumps({SLOT: 1}), "--disable-usage-stats"]
        command += ["--dashboard-agent-listen-port", str(free_port())]
        command += ["--dashboard-agent-grpc-port", str(free_port())]
        command += ["--metrics-export-port", str(free_port())]
        command += ["--runtime-env-agent-port", str(free_port())]
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.log: list[str] = []
        self._started = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        for line in self.process.stdout:
            self.log.append(line)
            if "Ray runtime started" in line:
                self._started.set()
        self._started.set()

    def wait_started(self) -> None:
        started = self._started.wait(START_TIMEOUT_S)
        assert started, f"{self.name} did not start in time:\n{''.join(self.log[-30:])}"
        assert self.process.poll() is None, f"{self.name} exited:\n{''.join(self.log[-30:])}"

    def kill(self) -> None:
        """SIGKILL to the node and all its processes: what a dead machine looks like."""
        for pid in [self.process.pid, *_descendants(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class Cluster:
    def __init__(self) -> None:
        self.gcs_port = free_port()
        self.address = f"{HEAD_IP}:{self.gcs_port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "RAY_USAGE_STATS_ENABLED": "0",
            # A token in ~/.ray/auth_token (from any other Ray use here) would turn auth on for
            # the head only; this cluster lives on loopback for one test.
            "RAY_AUTH_MODE": "disabled",
            # The proxy would otherwise send everything to the replica on its own node.
            "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
        }
        self.nodes: list[RayNode] = []

    def start_head(self) -> RayNode:
        args = ["--head", "--node-ip-address", HEAD_IP, "--port", str(self.gcs_port)]
        args += ["--include-dashboard=false"]
        args += ["--dashboard-port", str(free_port())]
        args += ["--ray-client-server-port", str(free_port())]
        args += ["--system-config", json.dumps(HEAD_SYSTEM_CONFIG)]
        return self._add(RayNode("head", args, self.env))

    def start_worker(self, name: str, ip: str) -> RayNode:
        args = ["--address", self.address, "--node-ip-address", ip]
        return self._add(RayNode(name, args, self.env))

    def _add(self, node: RayNode) -> RayNode:
        self.nodes.append(node)
        node.wait_started()
        return node

    def shutdown(self) -> None:
        for node in reversed(self.nodes):
            node.kill()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def _serve_config(tmp_path: Path, checkpoint: Path, port: int) -> Path:
    """The shipped Serve config, with the tiny checkpoint, a free port and exactly two replicas."""
    config = yaml.safe_load((REPO / "deploy" / "ray" / "serve.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    [application] = config["applications"]
    # Eager torch: the replicas start without exporting ONNX graphs (seconds each, twice).
    env_vars = {"VAE_CHECKPOINT": str(checkpoint), "VAE_DEVICE": "cpu", "VAE_BACKEND": "torch"}
    application["runtime_env"]["env_vars"].update(env_vars)
    application["args"] = {"num_cpus": 0, "num_gpus": 0}
    [deployment] = application["deployments"]
    deployment["autoscaling_config"].update(min_replicas=2, max_replicas=2, initial_replicas=2)
    deployment["ray_actor_options"] = {"num_cpus": 0, "resources": {SLOT: 1}}
    deployment.update(health_check_period_s=1, health_check_timeout_s=5)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Traffic:
    """Requests to `/encode`, each retried until answered (never dropped), counted by node."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.names = {HEAD_IP: "head", WORKER_IP: "worker", NEW_WORKER_IP: "worker"}
        self.client = httpx.Client(timeout=20)
        self.retries = 0

    def one(self, deadline_s: float = 60, deploying: bool = False) -> str:
        """The name of the node that answered. Timeouts (408) and 5xx are retried and counted, and
        so is Serve's 404 while `deploying` (no route yet); any other 4xx fails the test."""
        give_up = time.monotonic() + deadline_s
        while True:
            try:
                response = self.client.get(f"{self.url}/encode", params={"example": "3-0"})
                if response.status_code == 200:
                    assert len(response.json()["mu"]) > 0
                    return self.names[response.headers["x-ray-node-ip"]]
                status = response.status_code
                retryable = status >= 500 or status == 408 or (deploying and status == 404)
                assert retryable, response.text
            except httpx.TransportError:
                pass
            self.retries += 1
            assert time.monotonic() < give_up, "a request was not answered within its deadline"
            time.sleep(0.25)

    def burst(self, n: int, concurrency: int = 4) -> Counter:
        with ThreadPoolExecutor(concurrency) as pool:
            return Counter(pool.map(lambda _: self.one(), range(n)))

    def until_both_answer(self, deadline_s: float = 120) -> None:
        """Replicas start at their own pace: send small bursts until both nodes have answered."""
        give_up, seen = time.monotonic() + deadline_s, Counter()
        while not (seen["head"] and seen["worker"]):
            assert time.monotonic() < give_up, f"only {dict(seen)} answered"
            seen += self.burst(8)


def test_two_replicas_on_two_nodes_survive_losing_one(cluster, tiny_checkpoint, tmp_path):
    cluster.start_head()
    worker = cluster.start_worker("worker", WORKER_IP)

    port = free_port()
    config = _serve_config(tmp_path, tiny_checkpoint, port)
    deploy = subprocess.run(
        [str(BIN / "serve"), "run", str(config), "--address", cluster.address, "--non-blocking"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    traffic = Traffic(f"http://127.0.0.1:{port}")
    traffic.one(deadline_s=120, deploying=True)  # waits for the replicas to load the model
    traffic.until_both_answer()

    traffic.retries = 0
    before = traffic.burst(40)
    print(f"\nboth nodes up: {dict(before)} (retries {traffic.retries})")
    assert before["head"] > 0 and before["worker"] > 0, before

    worker.kill()
    traffic.retries = 0
    during = traffic.burst(40)
    print(f"worker node killed: {dict(during)} (retries {traffic.retries})")
    assert sum(during.values()) == 40
    assert set(during) == {"head"}, during  # the dead node answers nothing

    cluster.start_worker("worker-2", NEW_WORKER_IP)
    traffic.until_both_answer()  # the lost replica is back, on the new node
    traffic.retries = 0
    after = traffic.burst(40)
    print(f"after a new worker node joined: {dict(after)} (retries {traffic.retries})")
    assert after["head"] > 0 and after["worker"] > 0
