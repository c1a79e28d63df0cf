"""`vae-serve`'s exit with the trace collector down (issue 26, point 8), on real servers: the last
spans are given `tracing.EXIT_DEADLINE_S` to leave, whatever the SDK and the network do, and the
process exits with code 0 (it took the whole 20 s grace period, and exit code 1, before)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import tracing
from harness.live_server import REPO, LiveServer
from harness.processes import free_port

GRACE_S = 20  # VAE_SHUTDOWN_GRACE_S's default, which the collector used to take whole
SLACK_S = 3.0  # reaping, and the log flush, on a slow shared machine: not the product's promise
ABANDONED = "trace export abandoned"


class SilentCollector:
    """A listener on 127.0.0.1 that accepts every connection, reads what is sent and never
    answers: a collector that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.accepted.append(connection)
            threading.Thread(target=self._swallow, args=(connection,), daemon=True).start()

    @staticmethod
    def _swallow(connection: socket.socket) -> None:
        try:
            while connection.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture(params=["port-closed", "never-answers"])
def collector_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Where the spans go: a loopback port nothing listens on, or a `SilentCollector`."""
    if request.param == "port-closed":
        yield f"http://127.0.0.1:{free_port()}"
        return
    collector = SilentCollector()
    try:
        yield collector.url
    finally:
        collector.close()


@pytest.mark.slow
def test_sigterm_exits_within_the_deadline_with_the_collector_down(
    tiny_checkpoint: Path, collector_url: str
) -> None:
    """Spans queued (a minute's batch schedule) and a 10 s export timeout, the SDK's default
    that an operator may set: the exit still waits for the collector only for the deadline."""
    server = LiveServer(
        tiny_checkpoint,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector_url,
        OTEL_EXPORTER_OTLP_TIMEOUT="10",
        OTEL_BSP_SCHEDULE_DELAY="60000",
        VAE_SHUTDOWN_GRACE_S=str(GRACE_S),
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(3):
                assert client.post("/sample", json={"n": 1}).status_code == 200
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=GRACE_S + SLACK_S)  # the watchdog's, at worst
        elapsed = time.monotonic() - start
        print(f"exited with {code} after {elapsed:.2f} s")
        assert elapsed <= tracing.EXIT_DEADLINE_S + SLACK_S, f"exited after {elapsed:.1f} s"
        assert code == 0, server.tail()
        time.sleep(0.3)  # the log reader reaches the end of stderr
        assert any(ABANDONED in line for line in server.log), server.tail()
    finally:
        server.stop()


EXIT_AFTER_AN_ABANDONED_FLUSH = """
import sys, time
from opentelemetry import trace
from app import tracing

tracing.configure()
with trace.get_tracer("t").start_as_current_span("pending"):
    pass
started = time.monotonic()
tracing.shutdown()
print(round(time.monotonic() - started, 2), flush=True)
sys.exit(0)
"""


def test_nothing_blocks_at_interpreter_exit_after_an_abandoned_flush() -> None:
    """A process that leaves the ordinary way (plain `uvicorn`, a `--workers` child): no exit
    hook of the SDK waits for the collector once the bounded shutdown has given up on it."""
    collector = SilentCollector()
    env = {
        "PYTHONPATH": str(REPO),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "10",
    }
    try:
        start = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", EXIT_AFTER_AN_ABANDONED_FLUSH],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        elapsed = time.monotonic() - start
    finally:
        collector.close()
    assert result.returncode == 0, result.stderr
    assert ABANDONED in result.stderr
    waited = float(result.stdout)
    assert waited <= tracing.EXIT_DEADLINE_S + 0.5
    assert elapsed <= waited + SLACK_S, f"{elapsed:.1f} s in all, {waited} s of it the flush"
