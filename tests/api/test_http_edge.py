"""The HTTP edge on a real `vae-serve` over loopback: what one client can cost is bounded.

Issue 12, problems 1 and 2: headers without a size cap, partly sent requests without a timeout,
connections without a cap. Short limits here keep every test to a few seconds; the full-size
measurement (20 connections x 50 MB) is `bench/edge_bench.py`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.live_server import LiveServer, read_all, status_and_body

TIMEOUT_S = 1.5
MAX_CONNECTIONS = 24


@pytest.fixture(scope="module")
def edge(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    server = LiveServer(
        tiny_checkpoint,
        VAE_HEADER_TIMEOUT_S=str(TIMEOUT_S),
        VAE_BODY_TIMEOUT_S=str(TIMEOUT_S),
        VAE_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        VAE_KEEP_ALIVE_S="1",
    )
    try:
        yield server
    finally:
        server.stop()


def json_error(response: bytes, status: int) -> str:
    code, body = status_and_body(response)
    assert code == status, response[:300]
    assert b"content-type: application/json" in response.lower()
    return json.loads(body)["detail"]


def healthz_ms(server: LiveServer) -> float:
    start = time.perf_counter()
    response = httpx.get(f"{server.url}/healthz", timeout=5)
    assert response.status_code == 200
    return (time.perf_counter() - start) * 1000


def test_huge_headers_from_20_connections_are_cut_off_and_memory_stays_flat(edge):
    """20 x 2 MB of unfinished header (the bench does 50 MB): 431 each, little memory, and
    /healthz answers throughout."""
    before = edge.memory_mb()
    results: list[bytes] = []

    def flood() -> None:
        sock = edge.connect()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: ")
        try:
            for _ in range(32):  # 2 MB in 64 KB pieces; the server stops reading long before
                sock.sendall(b"a" * 65536)
        except OSError:
            pass
        results.append(read_all(sock, timeout=5))
        sock.close()

    threads = [threading.Thread(target=flood) for _ in range(20)]
    for thread in threads:
        thread.start()
    latencies = [healthz_ms(edge) for _ in range(5)]
    for thread in threads:
        thread.join(timeout=20)
    assert len(results) == 20
    # A reset can overtake the 431 when the server closes while the client is still sending;
    # every answer that did arrive is the JSON 431.
    answered = [r for r in results if r]
    assert answered, "no client got an answer"
    for response in answered:
        assert "headers over" in json_error(response, 431)
    assert edge.memory_mb() - before < 50
    assert max(latencies) < 2000


def test_too_many_header_fields_get_431(edge):
    sock = edge.connect()
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(150))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert "header fields" in json_error(read_all(sock), 431)


def test_url_over_the_parser_limit_gets_a_json_414(edge):
    sock = edge.connect()
    sock.sendall(b"GET /encode?image=" + b"A" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert "URL longer than 65535" in json_error(read_all(sock), 414)


def test_a_malformed_request_gets_a_json_400(edge):
    sock = edge.connect()
    sock.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
    assert "invalid HTTP request" in json_error(read_all(sock), 400)


def test_a_half_sent_head_times_out_with_408(edge):
    sock = edge.connect()
    start = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    response = read_all(sock, timeout=10)
    assert "not complete within" in json_error(response, 408)
    assert TIMEOUT_S * 0.8 < time.monotonic() - start < TIMEOUT_S + 3


def test_a_silent_connection_is_closed(edge):
    sock = edge.connect()
    start = time.monotonic()
    assert read_all(sock, timeout=10) == b""
    assert time.monotonic() - start < TIMEOUT_S + 3


def test_a_stalled_upload_body_times_out_with_408(edge):
    sock = edge.connect()
    start = time.monotonic()
    sock.sendall(
        b"POST /reconstruct HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
    )
    assert "body stalled" in json_error(read_all(sock, timeout=10), 408)
    assert time.monotonic() - start < 2 * TIMEOUT_S + 3  # detected within one to two periods
    assert healthz_ms(edge) < 2000


def test_a_slow_but_steady_upload_is_not_cut_off(edge, digit_png):
    """Bytes keep coming, just slowly: that is a slow client, not a stalled one."""
    boundary = b"slow"
    body = (
        b'--slow\r\nContent-Disposition: form-data; name="file"; filename="7.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + digit_png + b"\r\n--slow--\r\n"
    )
    sock = edge.connect()
    sock.sendall(
        b"POST /encode HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n"
        b"Content-Type: multipart/form-data; boundary=%s\r\n\r\n" % (len(body), boundary)
    )
    pieces = [body[i : i + len(body) // 6 + 1] for i in range(0, len(body), len(body) // 6 + 1)]
    for piece in pieces:  # about 3 x TIMEOUT_S in all, never silent for TIMEOUT_S
        sock.sendall(piece)
        time.sleep(TIMEOUT_S / 2)
    code, answer = status_and_body(read_all(sock))
    assert code == 200, answer
    assert len(json.loads(answer)["mu"]) == 8


def test_at_the_cap_a_connection_without_a_request_makes_room_for_a_new_one(edge):
    """Connections that never sent a request are closed, oldest first, when a new one comes."""
    idle = [edge.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        sock = edge.connect()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_and_body(read_all(sock))[0] == 200
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b"", "the oldest idle connection was not the one closed"
    finally:
        for sock in idle:
            sock.close()


def test_connections_over_the_cap_all_busy_get_503_and_the_server_recovers(edge):
    """Every open connection is in a request (a body still to come): the newcomer gets 503."""
    busy = [edge.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in busy:
            sock.sendall(
                b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b"
            )
        time.sleep(0.3)
        sock = edge.connect()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = read_all(sock)
        assert "too many open connections" in json_error(response, 503)
        assert b"retry-after: 1" in response.lower()
    finally:
        for sock in busy:
            sock.close()
    time.sleep(0.3)
    assert healthz_ms(edge) < 2000


def test_idle_keep_alive_connections_close(edge):
    sock = edge.connect()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    start = time.monotonic()
    response = read_all(sock, timeout=10)  # the answer, then the close after VAE_KEEP_ALIVE_S
    assert status_and_body(response)[0] == 200
    assert time.monotonic() - start < 4


def test_a_body_over_the_limit_by_its_length_gets_a_json_413_before_it_is_sent(edge):
    sock = edge.connect()
    sock.sendall(
        b"POST /reconstruct HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    )
    assert "request body too large" in json_error(read_all(sock), 413)
    assert not any("Traceback" in line for line in edge.log)


def test_a_chunked_body_over_the_limit_gets_a_json_413(edge):
    sock = edge.connect()
    sock.sendall(
        b"POST /reconstruct HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
    sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
    chunk = b"%x\r\n" % 65536 + b"a" * 65536 + b"\r\n"
    try:
        for _ in range(200):  # 13 MB, over the 10.1 MB default
            sock.sendall(chunk)
    except OSError:
        pass
    assert "request body too large" in json_error(read_all(sock), 413)


def test_the_uvicorn_internals_the_edge_extends_are_still_there():
    """The edge extends uvicorn's httptools protocol, which is not a public API. pyproject.toml
    pins uvicorn's minor version; this fails, naming what moved, when an upgrade changes it."""
    import inspect

    from uvicorn.protocols.http import flow_control, httptools_impl

    protocol = httptools_impl.HttpToolsProtocol
    overridden = [
        "connection_made",
        "connection_lost",
        "data_received",
        "shutdown",
        "on_message_begin",
        "on_url",
        "on_header",
        "on_headers_complete",
        "on_body",
        "on_message_complete",
        "on_response_complete",
        "send_400_response",
    ]
    called = ["_unset_keepalive_if_required", "timeout_keep_alive_handler"]
    for name in overridden + called:
        assert callable(getattr(protocol, name, None)), f"HttpToolsProtocol.{name} is gone"
    # A limit hit in a parser callback reaches the client through send_400_response.
    assert "self.send_400_response(" in inspect.getsource(protocol.data_received)
    used = {
        protocol: [
            "self.connections",
            "self.url",
            "self.headers",
            "self.cycle",
            "self.flow",
            "self.server_state",
            "self.loop",
            "self.transport",
            "self.client",
            "self.pipeline",
            "self.timeout_keep_alive_task",
            "self.timeout_keep_alive ",
        ],
        httptools_impl.RequestResponseCycle: [
            "self.more_body",
            "self.disconnected",
            "self.message_event",
            "self.response_started",
            "self.response_complete",
        ],
        flow_control.FlowControl: ["self.read_paused"],
    }
    for owner, attributes in used.items():
        source = inspect.getsource(owner)
        for attribute in attributes:
            assert attribute in source, f"{owner.__name__} no longer has {attribute}"
    for status in (400, 408, 414, 431, 503):
        assert status in httptools_impl.STATUS_LINE
