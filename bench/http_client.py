"""What the load generators share: one keep-alive connection replaying a request byte for byte,
and the readiness probe they poll before measuring.

The benchmarks run as scripts (`python bench/x.py`), so they import this as `http_client`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

HOST = "127.0.0.1"

# Called once per response: when the request was sent, how long the whole answer took, its status.
Record = Callable[[float, float, int], None]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    """One response, read whole (by Content-Length): its status and its `Retry-After` (0: none)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    length = retry_after = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        lower = line.lower()
        if lower.startswith(b"content-length:"):
            length = int(line[15:])
        elif lower.startswith(b"retry-after:"):
            retry_after = int(line[12:])
    await reader.readexactly(length)
    return int(status_line.split()[1]), retry_after


async def replay(request: bytes, port: int, stop_at: float, record: Record) -> None:
    """Sends `request` again and again on one connection until `stop_at`, reading each response
    whole before the next; far cheaper per request than an HTTP library."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while (start := time.perf_counter()) < stop_at:
            writer.write(request)
            status, _ = await read_response(reader)
            record(start, time.perf_counter() - start, status)
    finally:
        writer.close()


def answers_200(port: int, path: str, timeout: float = 2.0) -> bool:
    """One `GET path` on a fresh connection: is the server up and ready?"""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
