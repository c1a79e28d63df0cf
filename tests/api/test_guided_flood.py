"""A flood of guided-digit requests (issue 22, point 5) on a real `vae-serve` over loopback.

32 clients at once, each asking again and again for 256 chosen digits (each digit tries 8
candidate latents through the guide classifier): a request is admitted whole, with all its
candidates booked up front, or refused at once with 503 and `Retry-After`; none runs into its
deadline (504), and memory grows only by the admitted work.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx

from harness.live_server import REPO, LiveServer

CLIENTS = 32
FLOOD_S = 15


def test_a_flood_of_guided_digits_gets_200s_and_503s_only_and_bounded_memory():
    server = LiveServer(REPO / "models" / "mnist-vae.pt")
    body = {"digits": [i % 10 for i in range(256)]}
    try:
        url = f"{server.url}/sample"
        first = httpx.post(url, json={**body, "seed": 0}, timeout=60)  # learns the cost per row
        assert first.status_code == 200, first.text
        before = server.memory_mb("VmRSS")
        statuses: Counter[int] = Counter()
        problems: list[str] = []
        stop = time.monotonic() + FLOOD_S

        def client(index: int) -> None:
            with httpx.Client(timeout=60) as http:
                seed = index * 1000
                while time.monotonic() < stop:
                    seed += 1
                    response = http.post(url, json={**body, "seed": seed})
                    statuses[response.status_code] += 1
                    if response.status_code == 503 and "retry-after" not in response.headers:
                        problems.append("503 without Retry-After")
                    if response.status_code == 503:
                        time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=FLOOD_S + 90)
        growth = server.memory_mb("VmHWM") - before
    finally:
        server.stop()
    print(f"guided flood: {dict(statuses)}, peak RSS +{growth:.0f} MB")
    assert set(statuses) <= {200, 503}, dict(statuses)
    assert statuses[200] >= 1 and not problems
    assert growth <= 300
