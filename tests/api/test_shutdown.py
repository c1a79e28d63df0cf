"""Graceful shutdown with a deadline (issue 12, problem 2), on a real `vae-serve` over loopback.

On SIGTERM `/readyz` answers 503 at once, new work gets 503, a request in flight finishes, and
the process exits within `VAE_SHUTDOWN_GRACE_S` whatever the clients do: here five uploads that
stop half-way and never send the rest (the bench does the same with the default 20 s).
"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from harness.live_server import LiveServer, read_all, status_and_body

GRACE_S = 4.0


def half_sent_upload(
    server: LiveServer, body: bytes, sent: int, request_id: str = "upload"
) -> socket.socket:
    sock = server.connect()
    sock.sendall(
        b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nX-Request-ID: %s\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        % (len(body), request_id.encode())
        + body[:sent]
    )
    return sock


def multipart(png: bytes) -> bytes:
    return (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="7.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--b--\r\n"
    )


@pytest.mark.slow
def test_sigterm_drains_then_exits_within_the_grace_period(tiny_checkpoint: Path, digit_png):
    server = LiveServer(
        tiny_checkpoint, VAE_SHUTDOWN_GRACE_S=str(GRACE_S), VAE_BODY_TIMEOUT_S="600"
    )
    try:
        body = multipart(digit_png)
        stalled = [half_sent_upload(server, body, 40) for _ in range(5)]
        finishing = half_sent_upload(server, body, 40)
        time.sleep(0.3)

        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(f"{server.url}/readyz", timeout=5)
        assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        refused = httpx.post(f"{server.url}/sample", json={"n": 1}, timeout=5)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
        assert "shutting down" in refused.json()["detail"]

        finishing.sendall(body[40:])  # the request in flight completes during the drain
        status, answer = status_and_body(read_all(finishing, timeout=GRACE_S + 2))
        assert status == 200 and len(json.loads(answer)["mu"]) == 8

        server.process.wait(timeout=GRACE_S + 10)
        elapsed = time.monotonic() - start
        assert elapsed <= GRACE_S + 1.0, f"exited after {elapsed:.1f} s"  # + reaping, busy CI
        for sock in stalled:
            sock.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_an_idle_server_exits_at_once_and_cleanly(tiny_checkpoint: Path):
    server = LiveServer(tiny_checkpoint, VAE_SHUTDOWN_GRACE_S="20")
    try:
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=25) == 0
        assert time.monotonic() - start < 3
    finally:
        server.stop()


@pytest.mark.slow
def test_every_answered_request_has_its_access_line_after_sigterm(tiny_checkpoint: Path, digit_png):
    """`os._exit` skips the interpreter's teardown; the access log is flushed first on every way
    out, so requests the drain cancels (answered 503) are logged like the rest."""
    server = LiveServer(
        tiny_checkpoint, VAE_SHUTDOWN_GRACE_S=str(GRACE_S), VAE_BODY_TIMEOUT_S="600"
    )
    try:
        served = [f"served-{i}" for i in range(10)]
        for request_id in served:
            headers = {"X-Request-ID": request_id}
            response = httpx.post(f"{server.url}/sample", json={"n": 1}, headers=headers)
            assert response.status_code == 200
        body = multipart(digit_png)
        cancelled = [f"stalled-{i}" for i in range(5)]
        stalled = [half_sent_upload(server, body, 40, rid) for rid in cancelled]
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        answers = [status_and_body(read_all(sock, timeout=GRACE_S + 5))[0] for sock in stalled]
        assert server.process.wait(timeout=GRACE_S + 10) == 0
        assert answers == [503] * 5
        time.sleep(0.5)  # the log reader reaches the end of stderr
        lines = [json.loads(line) for line in server.log if line.startswith("{")]
        access = [entry for entry in lines if entry.get("logger") == "app.access"]
        logged = {entry["request_id"]: entry["status"] for entry in access}
        assert {rid: logged.get(rid) for rid in served} == dict.fromkeys(served, 200)
        assert {rid: logged.get(rid) for rid in cancelled} == dict.fromkeys(cancelled, 503)
    finally:
        server.stop()
