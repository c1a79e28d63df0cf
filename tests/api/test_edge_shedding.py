"""The edge's refusals from a request's head (issue 26): cheap, and cheaper still for a client
that ignores its `Retry-After` with a large body.

A flood of 12-megapixel uploads from clients that sent again at once had the event loop skip
megabytes of refused body four times a second per client (730 refusals a second, a third of the
core): the 16x flood's goodput fell to 0.57 of capacity. Such a body now waits out its
`Retry-After` unread; a small one still gets its 503 after at most `RETRY_PAUSE_S`.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from app.errors import Overloaded
from app.server.edge import LARGE_BODY_BYTES, RETRY_PAUSE_S, EdgeLimits, GuardedHttpToolsProtocol
from harness.processes import free_port

RETRY_AFTER_S = 2
KEEP_ALIVE_S = 1  # shorter than the pauses below, in which a connection is not idle


async def ok_app(scope, receive, send) -> None:
    """Answers 200 to whatever the check lets through."""
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


REFUSE_ONCE: set[str] = set()  # paths refused the next time only, with Retry-After: 1


def refuse_posts(method: str, path: str, headers: list) -> Overloaded | None:
    if path in REFUSE_ONCE:
        REFUSE_ONCE.discard(path)
        return Overloaded("busy for a second", retry_after=1)
    return Overloaded("busy", retry_after=RETRY_AFTER_S) if method == "POST" else None


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    limits = EdgeLimits(
        max_header_bytes=16384,
        max_headers=64,
        header_timeout_s=10,
        body_timeout_s=10,
        max_connections=16,
    )
    port = free_port()
    config = uvicorn.Config(
        ok_app,
        host="127.0.0.1",
        port=port,
        http=GuardedHttpToolsProtocol.configured(limits, refuse_posts),
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


def post(size: int) -> bytes:
    head = f"POST /reconstruct HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
    return head.encode() + b"x" * size


def answer(sock: socket.socket) -> tuple[bytes, float]:
    """One response (head and its short JSON body) and the seconds it took to arrive."""
    started = time.monotonic()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head, time.monotonic() - started


def ask_twice(port: int, size: int) -> tuple[bytes, float, bytes]:
    """Posts a body of `size` bytes twice on one connection (the second at once, ignoring the
    first answer's Retry-After), then a GET: the second 503's head and delay, and the GET's
    head (the connection still in step)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sender = threading.Thread(target=sock.sendall, args=(post(size) + post(size),))
        sender.start()
        first, _ = answer(sock)
        assert first.startswith(b"HTTP/1.1 503") and f"retry-after: {RETRY_AFTER_S}".encode() in (
            first.lower()
        )
        second, waited = answer(sock)
        sender.join(10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        after, _ = answer(sock)
    return second, waited, after


def test_a_small_body_asked_again_at_once_is_refused_after_a_short_pause(port):
    second, waited, after = ask_twice(port, 1000)
    assert second.startswith(b"HTTP/1.1 503")
    assert waited < RETRY_PAUSE_S + 0.5
    assert after.startswith(b"HTTP/1.1 200")


def test_a_large_body_asked_again_at_once_waits_out_its_retry_after_unread(port):
    second, waited, after = ask_twice(port, 8 * LARGE_BODY_BYTES)
    assert second.startswith(b"HTTP/1.1 503")
    assert waited > RETRY_AFTER_S - 0.5
    assert after.startswith(b"HTTP/1.1 200")


def test_asking_early_does_not_extend_the_retry_after(port):
    """A client told `Retry-After: 1` that asks again 0.3 s later is answered when its second is
    up, and asking again then is checked as any request is (here admitted): the early request
    does not start a new second of waiting."""
    REFUSE_ONCE.add("/once")
    request = b"GET /once HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        first, _ = answer(sock)
        told_at = time.monotonic()
        assert first.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in first.lower()
        time.sleep(0.3)
        sock.sendall(request)
        early, _ = answer(sock)
        assert early.startswith(b"HTTP/1.1 503")
        assert 0.6 < time.monotonic() - told_at < 1.4  # held until its second was up
        sock.sendall(request)
        then, waited = answer(sock)
    assert then.startswith(b"HTTP/1.1 200") and waited < 0.2


def test_a_request_waiting_out_its_pause_is_not_closed_as_idle(port):
    """The first refusal's answer is complete within the read that brings the next request's head;
    that request then waits out its `Retry-After` unread, longer than the keep-alive timeout. It
    gets its 503; uvicorn's keep-alive timer, armed by the first answer, closed it before."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sender = threading.Thread(
            target=sock.sendall, args=(post(100) + post(8 * LARGE_BODY_BYTES),)
        )
        sender.start()
        first, _ = answer(sock)
        assert first.startswith(b"HTTP/1.1 503")
        second, waited = answer(sock)
        sender.join(10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        after, _ = answer(sock)
    assert second.startswith(b"HTTP/1.1 503") and waited > KEEP_ALIVE_S
    assert after.startswith(b"HTTP/1.1 200")


def test_a_connection_told_to_come_back_is_still_open_when_it_does(port):
    """`Retry-After: 2` on a connection whose keep-alive is 1 s: the client that comes back after
    2 s on it is answered (the keep-alive counts from then). It used to find the connection
    closed, or closing as it sent, and lost its request."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(post(100))
        first, _ = answer(sock)
        assert first.startswith(b"HTTP/1.1 503")
        time.sleep(RETRY_AFTER_S + 0.1)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        then, _ = answer(sock)
    assert then.startswith(b"HTTP/1.1 200")
