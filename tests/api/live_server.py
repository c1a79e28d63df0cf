"""`vae-serve` in a subprocess on 127.0.0.1 and a free port, for the connection-level tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """Starts `python -m app.server.cli` and keeps its stderr, so a test can read the log lines."""

    def __init__(self, checkpoint: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
        environ.update(
            {"VAE_CHECKPOINT": str(checkpoint), "VAE_DEVICE": "cpu", "VAE_LOG_LEVEL": "info"}
        )
        environ.update(env)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.server.cli",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=REPO,
            env=environ,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        started = threading.Event()

        def watch() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line)
                if "Uvicorn running on" in line:  # the listener is bound
                    started.set()
            started.set()

        threading.Thread(target=watch, daemon=True).start()
        assert started.wait(STARTUP_TIMEOUT_S), "server did not start in time"
        assert self.process.poll() is None, "".join(self.log)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return sock

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
