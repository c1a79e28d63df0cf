"""A client that goes away before its answer begins stops its request's work (issue 26, point 3).

The edge cancels the request's task when the connection closes: a queued decode or a guided
request's remaining slices are not run for nobody, and the request is counted as 499 (nginx's
"client closed request"), not as an answer nobody read.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import httpx

from harness.live_server import REPO, LiveServer

GUIDED = json.dumps({"digits": [i % 10 for i in range(256)], "seed": 1}).encode()


def post(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def count(metrics: str, status: int) -> float:
    line = re.search(
        rf'^vae_http_requests_total{{method="POST",route="/sample",status="{status}"}} (\S+)$',
        metrics,
        re.MULTILINE,
    )
    return float(line.group(1)) if line else 0.0


def test_a_request_whose_client_left_is_cancelled_and_counted_499():
    server = LiveServer(REPO / "models" / "mnist-vae.pt")
    try:
        first = httpx.post(f"{server.url}/sample", content=GUIDED, timeout=60)
        assert first.status_code == 200, first.text  # learns the cost per row
        took_s = first.elapsed.total_seconds()
        stays: list[httpx.Response] = []  # another client's request, under way meanwhile
        other = threading.Thread(
            target=lambda: stays.append(httpx.post(f"{server.url}/sample", content=GUIDED))
        )
        other.start()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(post("/sample", GUIDED))
            time.sleep(min(0.1, took_s / 4))  # admitted and under way
        other.join(60)
        deadline = time.monotonic() + 30
        while (gone := count(httpx.get(f"{server.url}/metrics").text, 499)) < 1:
            assert time.monotonic() < deadline, "the request was not counted as 499"
            time.sleep(0.05)
        metrics = httpx.get(f"{server.url}/metrics").text
        after = httpx.post(f"{server.url}/sample", json={"n": 1, "seed": 3}, timeout=30)
    finally:
        server.stop()
    assert stays and stays[0].status_code == 200  # only the request whose client left stops
    assert gone == 1 and count(metrics, 200) == 2
    assert after.status_code == 200
    assert "Exception in ASGI application" not in "\n".join(server.log)
