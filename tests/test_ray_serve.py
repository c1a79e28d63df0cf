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

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from harness.processes import free_port
from harness.ray_cluster import (
    RayNode,
    head_args,
    ray_env,
    serve_config,
    serve_run,
    started_node,
)

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -e '.[ray]'")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SLOT = "vae_slot"
# Each node on its own loopback address: all traffic stays on this machine's loopback.
HEAD_IP, WORKER_IP, NEW_WORKER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
# Ray asks the GCS about a node's health every second and declares it dead after 3 misses.
HEAD_SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}
PAUSE_BETWEEN_BURSTS_S = 0.5  # while waiting for a replica: it starts on the same 2 cores


class Cluster:
    """Ray nodes of one cluster, each with one CPU and one `vae_slot`; a context manager that
    kills them all."""

    def __init__(self) -> None:
        self.gcs_port = free_port()
        self.address = f"{HEAD_IP}:{self.gcs_port}"
        # The proxy would otherwise send everything to the replica on its own node.
        self.env = ray_env(RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING="0")
        self.nodes: list[RayNode] = []

    def start_head(self) -> RayNode:
        return self._add("head", head_args(HEAD_IP, self.gcs_port, HEAD_SYSTEM_CONFIG))

    def start_worker(self, name: str, ip: str) -> RayNode:
        return self._add(name, ["--address", self.address, "--node-ip-address", ip])

    def _add(self, name: str, args: list[str]) -> RayNode:
        node = started_node(name, args, self.env, resources={SLOT: 1})
        self.nodes.append(node)
        return node

    def serve_logs(self) -> str:
        """The tails of each node's Serve logs and worker stderr, for a failure message (a killed
        node's logs went with it)."""
        return "".join(node.log_tails() + node.log_tails("worker-*.err", 5) for node in self.nodes)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for node in reversed(self.nodes):
            node.kill()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with Cluster() as cluster:
        yield cluster


def _serve_config(checkpoint: Path, port: int) -> dict:
    """The shipped Serve config, with the tiny checkpoint, a free port and exactly two replicas,
    one slot each (so one per node)."""
    # Eager torch: the replicas start without exporting ONNX graphs (seconds each, twice).
    config = serve_config(
        port, 2, VAE_CHECKPOINT=str(checkpoint), VAE_DEVICE="cpu", VAE_BACKEND="torch"
    )
    [application] = config["applications"]
    application["args"] = {"num_cpus": 0, "num_gpus": 0}
    [deployment] = application["deployments"]
    deployment["ray_actor_options"] = {"num_cpus": 0, "resources": {SLOT: 1}}
    deployment.update(health_check_period_s=1, health_check_timeout_s=5)
    return config


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

    def until_both_answer(self, cluster: Cluster, deadline_s: float = 120) -> None:
        """Replicas start at their own pace: small bursts until both nodes have answered, with a
        pause after each, because a replica starting on a busy 2-core machine needs a core too."""
        give_up, seen = time.monotonic() + deadline_s, Counter()
        while not (seen["head"] and seen["worker"]):
            if time.monotonic() > give_up:
                pytest.fail(f"only {dict(seen)} answered in {deadline_s} s\n{cluster.serve_logs()}")
            seen += self.burst(8)
            time.sleep(PAUSE_BETWEEN_BURSTS_S)


def test_two_replicas_on_two_nodes_survive_losing_one(cluster, tiny_checkpoint, tmp_path):
    cluster.start_head()
    worker = cluster.start_worker("worker", WORKER_IP)

    port = free_port()
    config = _serve_config(tiny_checkpoint, port)
    serve_run(config, tmp_path / "serve.yaml", cluster.address, cluster.env)
    traffic = Traffic(f"http://127.0.0.1:{port}")
    traffic.one(deadline_s=120, deploying=True)  # waits for the replicas to load the model
    traffic.until_both_answer(cluster)

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
    traffic.until_both_answer(cluster)  # the lost replica is back, on the new node
    traffic.retries = 0
    after = traffic.burst(40)
    print(f"after a new worker node joined: {dict(after)} (retries {traffic.retries})")
    assert after["head"] > 0 and after["worker"] > 0
