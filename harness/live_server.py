"""Our service on 127.0.0.1 and a free port, for the tests, benchmarks and scripts that need a
listener: `vae-serve` by default, plain uvicorn or the packaged entry point where that is what
they are about. Plus the raw-socket reads the HTTP-edge tests make of it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.processes import HOST, STOP_GRACE_S
from harness.server import REPO, STARTUP_TIMEOUT_S, ServerProcess

VAE_SERVE = [sys.executable, "-m", "app.server.cli"]
PLAIN_UVICORN = [sys.executable, "-m", "uvicorn", "app.main:app"]


def entry_point_command(script: str) -> list[str]:
    """`python -c` calling what `[project.scripts]` names for `script` (as its wrapper does), so
    that a move of the module behind an entry point does not break the tests that start it."""
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"][script]
    module, function = target.split(":")
    code = f"import sys; from {module} import {function} as main; sys.exit(main())"
    return [sys.executable, "-c", code]


def server_env(checkpoint: Path, **overrides: str) -> dict[str, str]:
    """This process's environment without its VAE_* settings (a developer's shell must not change
    what a test serves), serving `checkpoint` on the CPU with info logs, then `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env.update(VAE_CHECKPOINT=str(checkpoint), VAE_DEVICE="cpu", VAE_LOG_LEVEL="info")
    env.update(overrides)
    return env


class LiveServer(ServerProcess):
    """Our service serving `checkpoint`, with `server_env`'s settings and `env` over them. Ready
    to connect to once constructed: the listener is bound, and with `ready` /readyz answers 200.

    `command` is what starts it (the host and port arguments are appended); `wrap` turns that
    command line into another one that execs it (a mount namespace, say); `cwd` is the checkout
    it runs from. The rest are `ServerProcess`'s.
    """

    def __init__(
        self,
        checkpoint: Path,
        *,
        command: Sequence[str] = VAE_SERVE,
        wrap: Callable[[list[str]], list[str]] | None = None,
        ready: bool = False,
        cwd: Path = REPO,
        stdout: int | None = None,
        log_file: Path | None = None,
        output: Path | None = None,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        stop_grace_s: float = STOP_GRACE_S,
        **env: str,
    ) -> None:
        argv = [*command, "--host", HOST, "--port", "{port}"]
        super().__init__(
            wrap(argv) if wrap else argv,
            cwd=cwd,
            env=server_env(checkpoint, **env),
            ready="/readyz" if ready else None,
            stdout=stdout,
            log_file=log_file,
            output=output,
            startup_timeout_s=startup_timeout_s,
            stop_grace_s=stop_grace_s,
        )

    def connect(self) -> socket.socket:
        return socket.create_connection((HOST, self.port), timeout=10)

    def __enter__(self) -> LiveServer:
        return self


def read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes (or `timeout`)."""
    sock.settimeout(timeout)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            out += data
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def status_and_body(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def start_that_stops(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Runs a start-up `command` (`VAE_SERVE`, `PLAIN_UVICORN`, with arguments) that is expected
    to stop at once, as a bad setting makes it: its exit code and output, in text."""
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
