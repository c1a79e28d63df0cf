"""Real servers on 127.0.0.1 and a free port, for the tests that need a listener.

The one place that starts a server process, waits until it serves (the bound line on its log, or
an answer over HTTP: never a sleep-and-hope), fails with the last lines it logged when it exits or
does not come up, and stops it. `LiveServer` runs our service: `vae-serve` by default, plain
uvicorn or the packaged entry point where that is what a test is about.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 180  # loading and warming a model on a busy two-core machine
BOUND_LINE = "Uvicorn running on"  # uvicorn logs it once startup is done and the port is bound
STOP_GRACE_S = 30

VAE_SERVE = [sys.executable, "-m", "app.server.cli"]
PLAIN_UVICORN = [sys.executable, "-m", "uvicorn", "app.main:app"]


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def stop(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, and SIGKILL if it is still running after `grace_s` (a no-op once it exited)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_answers(
    url: str, process: subprocess.Popen, timeout_s: float, log: Callable[[], str]
) -> None:
    """Polls `url` until it answers 200; fails with `log()` if the process exits first or
    `timeout_s` runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{shlex.join(process.args)} exited with {process.returncode}:\n{log()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200 within {timeout_s} s:\n{log()}")


class LiveServer:
    """Our service in a subprocess on 127.0.0.1 and a free port, its stderr kept line by line in
    `log` so a test can read what it logged. Ready to connect to once constructed: the listener
    is bound, and with `ready` /readyz answers 200 too. Also a context manager that stops it.

    `command` is what starts it (the port arguments are appended); `wrap` turns that command line
    into another one that execs it (a mount namespace, say); `env` overrides `server_env`.
    """

    def __init__(
        self,
        checkpoint: Path,
        *,
        command: Sequence[str] = VAE_SERVE,
        wrap: Callable[[list[str]], list[str]] | None = None,
        ready: bool = False,
        log_file: Path | None = None,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        **env: str,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log: list[str] = []
        argv = [*command, "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            wrap(argv) if wrap else argv,
            cwd=REPO,
            env=server_env(checkpoint, **env),
            stderr=subprocess.PIPE,
            text=True,
        )
        self._bound = False
        self._settled = threading.Event()  # bound, or its log ended
        threading.Thread(target=self._watch, args=(log_file,), daemon=True).start()
        try:
            self._wait_until_started(startup_timeout_s, ready)
        except BaseException:
            self.stop()
            raise

    @property
    def host_port(self) -> str:
        """`127.0.0.1:port`, for clients and scrapers that take no scheme."""
        return f"127.0.0.1:{self.port}"

    def _watch(self, log_file: Path | None) -> None:
        sink: IO[str] | None = log_file.open("w", buffering=1) if log_file else None
        assert self.process.stderr is not None
        try:
            for line in self.process.stderr:
                self.log.append(line)
                if sink:
                    sink.write(line)
                if BOUND_LINE in line:
                    self._bound = True
                    self._settled.set()
        finally:
            if sink:
                sink.close()
            self._settled.set()

    def tail(self, lines: int = 30) -> str:
        return "".join(self.log[-lines:])

    def _wait_until_started(self, timeout_s: float, ready: bool) -> None:
        deadline = time.monotonic() + timeout_s
        command = shlex.join(self.process.args)
        if not self._settled.wait(timeout_s):
            pytest.fail(f"{command} did not bind in {timeout_s} s:\n{self.tail()}")
        if not self._bound:
            code = self.process.wait(timeout=STOP_GRACE_S)
            pytest.fail(f"{command} exited with {code} during start-up:\n{self.tail()}")
        if ready:
            remaining = max(deadline - time.monotonic(), 1.0)
            wait_until_answers(f"{self.url}/readyz", self.process, remaining, self.tail)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def memory_mb(self, key: str = "VmRSS") -> float:
        """A memory figure of the server process from /proc: VmRSS now, VmHWM its peak."""
        with open(f"/proc/{self.process.pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        raise KeyError(key)

    def stop(self) -> None:
        stop(self.process)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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
