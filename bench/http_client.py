"""What the load generators share: one keep-alive connection replaying a request byte for byte,
and the line each measured cell prints. (Servers are started by the harness: `harness/`.)

The benchmarks run as scripts (`python bench/x.py`), so they import this as `http_client`.
"""

from __future__ import annotations

import asyncio
import sys
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


def print_cell(label: str, concurrency: int, cell: dict, extra: str = "") -> None:
    """One measured cell as a progress line on stderr: who and what, then its rate, latencies
    (`extra` before the errors)."""
    print(
        f"{label} c={concurrency:<3} {cell['rps']:8.0f} req/s  p50 {cell['p50_ms']:7.2f} ms  "
        f"p99 {cell['p99_ms']:7.2f} ms  {extra}errors {cell['errors']}",
        file=sys.stderr,
        flush=True,
    )
