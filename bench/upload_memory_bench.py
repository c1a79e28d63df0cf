"""Memory of `vae-serve` across rounds of heavy uploads: peak RSS and what stays afterwards.

    python bench/upload_memory_bench.py [--side 4096] [--rounds 4] [--clients 24]

Issue 22, point 7: four rounds of 24 uploads of 4096x4096 16-bit RGBA PNGs (white, so each is
small on the wire and 134 MB once decoded) to `/encode`, all clients at once in each round. The
server runs in a subprocess with the shipped checkpoint and its defaults; the numbers are its
`VmRSS` before, `VmHWM` (the peak) and `VmRSS` after each round.
"""

from __future__ import annotations

import argparse
import json
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx

from harness.live_server import REPO, LiveServer


def png16_rgba(side: int) -> bytes:
    """A white 16-bit RGBA PNG: tiny on the wire, side x side x 8 bytes once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\xff\xff" * 4 * side
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def run(side: int, rounds: int, clients: int, **env: str) -> dict:
    """Starts a server, runs the rounds, returns the measurements (and stops it)."""
    png = png16_rgba(side)
    server = LiveServer(REPO / "models" / "mnist-vae.pt", **env)
    try:
        with httpx.Client(timeout=120) as http:  # warm: one small upload
            http.post(f"{server.url}/encode", files={"file": ("w.png", png16_rgba(64))})
        before = server.memory_mb()
        after_rounds, statuses = [], []

        def upload(_: int) -> int:
            files = {"file": ("big.png", png, "image/png")}
            return httpx.post(f"{server.url}/encode", files=files, timeout=120).status_code

        for _ in range(rounds):
            with ThreadPoolExecutor(clients) as pool:
                statuses += list(pool.map(upload, range(clients)))
            time.sleep(0.5)
            after_rounds.append(server.memory_mb())
        peak = server.memory_mb("VmHWM")
    finally:
        server.stop()
    return {
        "side": side,
        "png_bytes": len(png),
        "rounds": rounds,
        "clients": clients,
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak, 1),
        "rss_after_rounds_mb": [round(v, 1) for v in after_rounds],
        "retained_mb": round(after_rounds[-1] - before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=24)
    args = parser.parse_args()
    print(json.dumps(run(args.side, args.rounds, args.clients), indent=2))


if __name__ == "__main__":
    main()
