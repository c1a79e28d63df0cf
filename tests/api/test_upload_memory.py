"""Memory after heavy uploads (issue 22, point 7), on a real `vae-serve` over loopback.

Three rounds of 8 uploads of 2048x2048 16-bit RGBA PNGs at once (the issue's 4 x 24 at 4096x4096,
scaled down; `bench/upload_memory_bench.py` runs those): the transparent image is composited a
band at a time and the decode gate hands freed memory back to the OS. Before, the same rounds
raised the peak by about 300 MB and kept 80 to 120 MB; the bounds here sit between.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from harness.heavy_png import png16_rgba
from harness.live_server import LiveServer


def test_rounds_of_heavy_uploads_keep_the_peak_low_and_give_memory_back(tiny_checkpoint: Path):
    png = png16_rgba(2048)
    server = LiveServer(tiny_checkpoint, VAE_REQUEST_TIMEOUT_S="60")
    try:
        url = f"{server.url}/encode"
        warm = httpx.post(url, files={"file": ("w.png", png16_rgba(64))}, timeout=60)
        assert warm.status_code == 200, warm.text
        before, peak_before = server.memory_mb("VmRSS"), server.memory_mb("VmHWM")

        def upload(_: int) -> int:
            files = {"file": ("big.png", png, "image/png")}
            return httpx.post(url, files=files, timeout=120).status_code

        statuses = []
        for _ in range(3):
            with ThreadPoolExecutor(8) as pool:
                statuses += list(pool.map(upload, range(8)))
        assert statuses.count(200) == len(statuses), statuses
        time.sleep(1)  # the last responses' buffers are released after they are sent
        peak_growth = server.memory_mb("VmHWM") - max(before, peak_before)
        retained = server.memory_mb("VmRSS") - before
    finally:
        server.stop()
    print(f"peak +{peak_growth:.0f} MB, retained {retained:.0f} MB")
    assert peak_growth < 180
    assert retained < 80  # 1 MB on a quiet machine, 46 MB beside another load test
