"""Plain `uvicorn app.main:app` (issue 22, point 9): one clear warning at start-up that the edge
is missing, and a stalled request body still ends (408), so a SIGTERM can finish; `vae-serve`
does not warn. Both on real servers over loopback."""

from __future__ import annotations

import signal
import socket
import time

import httpx

from app.http.unguarded import WITHOUT_EDGE
from harness.live_server import PLAIN_UVICORN, LiveServer, read_all, status_and_body

BODY_TIMEOUT_S = 1.5


def test_plain_uvicorn_warns_once_and_times_out_a_stalled_body(tiny_checkpoint):
    server = LiveServer(
        tiny_checkpoint, command=PLAIN_UVICORN, VAE_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S)
    )
    process, port = server.process, server.port
    try:
        warnings = [line for line in server.log if "running without vae-serve's HTTP edge" in line]
        assert len(warnings) == 1 and "vae-serve" in warnings[0]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200

        stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
        start = time.monotonic()
        stalled.sendall(
            b"POST /reconstruct HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        )
        code, body = status_and_body(read_all(stalled, timeout=15))
        assert code == 408 and b"stalled" in body, body
        assert time.monotonic() - start < BODY_TIMEOUT_S + 5

        # A SIGTERM while an upload is stalled: the process exits once that body times out.
        second = socket.create_connection(("127.0.0.1", port), timeout=10)
        second.sendall(
            b"POST /reconstruct HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        )
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=BODY_TIMEOUT_S + 15)
        assert status_and_body(read_all(second, timeout=5))[0] == 408
    finally:
        server.stop()


def test_vae_serve_has_the_edge_and_does_not_warn(tiny_checkpoint):
    server = LiveServer(tiny_checkpoint)
    try:
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    finally:
        server.stop()
    assert not any(WITHOUT_EDGE[:40] in line for line in server.log)
