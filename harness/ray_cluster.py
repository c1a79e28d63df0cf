"""Ray nodes on this machine serving `deploy/ray/serve.yaml`, for the Ray Serve test and bench.

Each node is a `ray start --block` process with its own temp dir (short socket paths), its own
free ports and usage stats off, started in a session of its own; it is up once its log says
"Ray runtime started", and killed with everything it started. Use a loopback address other than
127.0.0.1 for a node: Ray swaps a literal 127.0.0.1 for the machine's outward address.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

from harness.processes import HOST, free_port, kill_tree
from harness.server import REPO, DidNotStart

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90
STARTED_LINE = "Ray runtime started"
# Ray gives a new node's raylet a fixed 30 s to register with the GCS; a 2-core machine still
# writing out a Docker build missed it once in `make test` (the node exits with this line).
REGISTRATION_TIMED_OUT = "timed out during startup"
# Every node listens on these; a free port each, so that two clusters (or a stray one) never meet.
NODE_PORT_FLAGS = (
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
)


def ray_env(**extra: str) -> dict[str, str]:
    """This process's environment for Ray's processes: this checkout importable, no usage stats,
    no auth (a token in ~/.ray/auth_token, from any other Ray use here, would turn it on for the
    head only; these clusters live on loopback), then `extra`."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0"}
    env["RAY_AUTH_MODE"] = "disabled"
    env.pop("VAE_API_KEY", None)
    return {**env, **extra}


def head_args(ip: str, port: int, system_config: dict | None = None) -> list[str]:
    """`ray start` arguments of a head node on `ip`:`port` (its GCS), without a dashboard."""
    args = ["--head", "--node-ip-address", ip, "--port", str(port), "--include-dashboard=false"]
    args += ["--dashboard-port", str(free_port())]
    args += ["--ray-client-server-port", str(free_port())]
    if system_config:
        args += ["--system-config", json.dumps(system_config)]
    return args


class RayNode:
    """One `ray start --block` process and everything it starts, killed together."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        *,
        cpus: int = 1,
        resources: dict[str, float] | None = None,
    ) -> None:
        self.name = name
        self.temp_dir = tempfile.mkdtemp(prefix=f"ray-{name}-", dir="/tmp")  # short socket paths
        command = [str(BIN / "ray"), "start", "--block", "--temp-dir", self.temp_dir, *args]
        command += [
            "--num-cpus",
            str(cpus),
            "--num-gpus",
            "0",
            "--object-store-memory",
            "100000000",
        ]
        command += ["--disable-usage-stats"]
        if resources:
            command += ["--resources", json.dumps(resources)]
        for flag in NODE_PORT_FLAGS:
            command += [flag, str(free_port())]
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
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            if STARTED_LINE in line:
                self._started.set()
        self._started.set()

    def wait_started(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until its log says it started; `DidNotStart` if it exits or takes longer."""
        tail = lambda: "".join(self.log[-30:])  # noqa: E731
        if not self._started.wait(timeout_s):
            raise DidNotStart(f"Ray node {self.name} did not start in {timeout_s} s:\n{tail()}")
        if self.process.poll() is not None:
            raise DidNotStart(f"Ray node {self.name} exited:\n{tail()}")

    def log_tails(self, pattern: str = "serve/*.log", lines: int = 15) -> str:
        """The last `lines` of each of this node's Ray logs that match `pattern` (Serve's
        controller, proxy and replicas by default): what a failed test shows of the cluster."""
        logs = sorted((Path(self.temp_dir) / "session_latest" / "logs").glob(pattern))
        return "".join(
            f"--- {self.name}: {log.name}\n"
            + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            + "\n"
            for log in logs
        )

    def kill(self) -> None:
        """SIGKILL to the node and all its processes: what a dead machine looks like."""
        kill_tree(self.process)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def started_node(
    name: str,
    args: list[str],
    env: dict[str, str],
    *,
    cpus: int = 1,
    resources: dict[str, float] | None = None,
) -> RayNode:
    """A `RayNode` once it has started, started a second time if Ray's own registration wait ran
    out (`REGISTRATION_TIMED_OUT`): that says the machine was busy, not that the node is broken."""
    tries_left = 2
    while True:
        tries_left -= 1
        node = RayNode(name, args, env, cpus=cpus, resources=resources)
        try:
            node.wait_started()
        except BaseException as exc:
            node.kill()
            if not tries_left or REGISTRATION_TIMED_OUT not in str(exc):
                raise
            continue
        return node


def serve_config(port: int, replicas: int, **env_vars: str) -> dict:
    """The shipped Serve config on 127.0.0.1:`port`, with exactly `replicas` replicas (the
    deployment autoscales by default) and `env_vars` set for them."""
    config = yaml.safe_load((REPO / "deploy" / "ray" / "serve.yaml").read_text())
    config["http_options"].update(host=HOST, port=port)
    [application] = config["applications"]
    application["runtime_env"]["env_vars"].update(env_vars)
    [deployment] = application["deployments"]
    deployment["autoscaling_config"].update(
        min_replicas=replicas, max_replicas=replicas, initial_replicas=replicas
    )
    return config


def serve_run(config: dict, path: Path, address: str, env: dict[str, str]) -> None:
    """Writes `config` to `path` and deploys it on the cluster at `address` (`serve run
    --non-blocking`); `DidNotStart` with Serve's output if that fails."""
    path.write_text(yaml.safe_dump(config))
    command = [str(BIN / "serve"), "run", str(path), "--address", address, "--non-blocking"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise DidNotStart(f"serve run exited with {done.returncode}:\n{done.stdout}{done.stderr}")
