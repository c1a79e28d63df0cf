"""A flood of half-open connections from one address does not lock out the others (issue 22, 8).

One client opens thousands of connections from 127.0.0.2, each with half a request head and then
silence, far past the connection cap; meanwhile /healthz from 127.0.0.1, on a new connection each
time, must answer 200 throughout. At the cap the edge closes a waiting connection of the address
holding the most of them, so the flood sheds its own connections, never the newcomer's.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx

from harness.live_server import LiveServer

MAX_CONNECTIONS = 200
FLOOD = 10_000


def test_half_open_flood_from_one_address_leaves_healthz_answering(tiny_checkpoint: Path):
    server = LiveServer(tiny_checkpoint, VAE_MAX_CONNECTIONS=str(MAX_CONNECTIONS))
    flood: list[socket.socket] = []
    done = threading.Event()

    def open_half_requests() -> None:
        try:
            for _ in range(FLOOD):
                sock = socket.socket()
                sock.bind(("127.0.0.2", 0))
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                flood.append(sock)
        finally:
            done.set()

    statuses: list[int] = []
    try:
        flooder = threading.Thread(target=open_half_requests)
        flooder.start()
        while not done.is_set() or len(statuses) < 20:
            response = httpx.get(f"{server.url}/healthz", timeout=10)  # a new connection each
            statuses.append(response.status_code)
            time.sleep(0.02)
        flooder.join(timeout=60)
        assert len(flood) == FLOOD
        time.sleep(0.5)
        closed = 0
        for sock in flood:
            sock.setblocking(False)
            try:
                closed += sock.recv(1) == b""
            except BlockingIOError:  # still open
                pass
            except ConnectionResetError:
                closed += 1
        assert statuses.count(200) == len(statuses), statuses
        assert closed >= FLOOD - MAX_CONNECTIONS, f"only {closed} flood connections were shed"
        assert any("at the connection cap" in line for line in server.log)
        print(f"{len(statuses)} x /healthz all 200 while {closed} of {FLOOD} were shed")
    finally:
        for sock in flood:
            sock.close()
        server.stop()


def test_the_per_address_limit_sheds_and_refuses_within_that_address(tiny_checkpoint: Path):
    """VAE_MAX_CONNECTIONS_PER_ADDRESS=20: the 21st connection from 127.0.0.2 closes that
    address's oldest idle one; when all 20 are busy in a request, it gets 503. 127.0.0.1 is
    served throughout."""
    server = LiveServer(tiny_checkpoint, VAE_MAX_CONNECTIONS_PER_ADDRESS="20")

    def connect_from_second_address() -> socket.socket:
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", server.port))
        sock.settimeout(10)
        return sock

    opened: list[socket.socket] = []
    try:
        opened += [connect_from_second_address() for _ in range(20)]
        time.sleep(0.2)
        newcomer = connect_from_second_address()
        opened.append(newcomer)
        newcomer.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert newcomer.recv(12).startswith(b"HTTP/1.1 200")
        assert opened[0].recv(1) == b"", "the address's oldest idle connection stays open"

        busy = [connect_from_second_address() for _ in range(20)]
        opened += busy
        for sock in busy:  # a request head with its body still to come: in progress
            sock.sendall(
                b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b"
            )
        time.sleep(0.5)
        refused = connect_from_second_address()
        opened.append(refused)
        refused.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = refused.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"from your address" in answer, answer
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    finally:
        for sock in opened:
            sock.close()
        server.stop()
