"""The `/v2` tensor codec's own cost beside a thread hop: what decides what runs on the event loop.

For a decoder request of B latents ([B, 32] in, [B, 1, 32, 32] out) it times, in this process,
reading the request and writing the answer with the service's codec (`app/routes/oip_codec.py`,
on orjson) and with Python's `json` as the codec used before, and one hop to a worker thread and
back on an asyncio loop. Pin it to one core, as the server is:

    taskset -c 0 .venv/bin/python bench/oip_codec_bench.py
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.routes.oip_codec import (  # noqa: E402
    TensorSpec,
    encode_infer_response,
    parse_infer_request,
)

LATENT = 32
Z = [TensorSpec("z", "FP32", (-1, LATENT))]
IMAGE = TensorSpec("image", "FP32", (-1, 1, 32, 32))


def per_call_us(fn: Callable[[], object], seconds: float = 0.5) -> float:
    """Median over rounds of the mean time of `fn()` in microseconds."""
    fn()
    rounds = []
    for _ in range(5):
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 5:
            fn()
            calls += 1
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return float(np.median(rounds))


def thread_hop_us() -> float:
    executor = ThreadPoolExecutor(1)

    async def hops() -> float:
        loop = asyncio.get_running_loop()
        for _ in range(200):
            await loop.run_in_executor(executor, int)
        started = time.perf_counter()
        for _ in range(2000):
            await loop.run_in_executor(executor, int)
        return (time.perf_counter() - started) / 2000 * 1e6

    return asyncio.run(hops())


def row(rows: int, rng: np.random.Generator) -> str:
    """One table row: B latents in, B images out."""
    z = rng.standard_normal((rows, LATENT)).astype(np.float32)
    tensor = {"name": "z", "datatype": "FP32", "shape": [rows, LATENT]}
    body = json.dumps({"id": "1", "inputs": [{**tensor, "data": z.ravel().tolist()}]}).encode()
    images = rng.random((rows, 1, 32, 32)).astype(np.float32)
    outputs = [(IMAGE, False, images)]
    answer, _ = encode_infer_response("decoder", "1", "1", outputs)
    read = per_call_us(lambda: parse_infer_request(body, None, Z, 256))
    read_json = per_call_us(lambda: json.loads(body))
    write = per_call_us(lambda: encode_infer_response("decoder", "1", "1", outputs))
    write_json = per_call_us(lambda: json.dumps(images.ravel().tolist()))
    return (
        f"| {rows} | {len(body):,} | {read:,.0f} us | {read_json:,.0f} us | {len(answer):,} "
        f"| {write:,.0f} us | {write_json:,.0f} us |"
    )


def main() -> int:
    rng = np.random.default_rng(0)
    print(
        "| rows B | body bytes | read and check: service | json.loads alone | answer bytes "
        "| write: service | json.dumps of the list |"
    )
    print("|---|---|---|---|---|---|---|")
    for rows in (1, 16, 64):
        print(row(rows, rng))
    print(f"\none hop to a worker thread and back: {thread_hop_us():.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
