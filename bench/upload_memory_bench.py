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
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from harness.heavy_png import png16_rgba
from harness.live_server import REPO, LiveServer


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
