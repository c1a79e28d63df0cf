"""Micro-batching: concurrent requests share forward passes; limits answer 503/504, not hangs."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from app.errors import Overloaded, ShuttingDown
from app.inference.batching import MicroBatcher
from app.inference.scheduler import InferenceScheduler


def batch_stats(metrics_text: str, op: str) -> tuple[float, float]:
    """(batches, rows) so far for one batched operation."""
    family = next(
        f for f in text_string_to_metric_families(metrics_text) if f.name == "vae_batch_size"
    )
    values = {
        s.name: s.value
        for s in family.samples
        if s.labels.get("op") == op and s.name.endswith(("_count", "_sum"))
    }
    return values["vae_batch_size_count"], values["vae_batch_size_sum"]


def test_200_concurrent_requests_succeed_in_shared_batches(settings, serving):
    """A burst of 200: each is served at once or told when to come back (503, `Retry-After`,
    since light work never queues long); coming back then, all 200 succeed, in shared batches."""

    async def until_served(client, seed: int) -> int:
        for _ in range(30):
            response = await client.post("/sample", json={"n": 1, "seed": seed})
            if response.status_code != 503:
                return response.status_code
            await asyncio.sleep(float(response.headers["retry-after"]))
        return 503

    async def burst() -> tuple[list[int], tuple[float, float], tuple[float, float]]:
        async with serving(settings) as client:
            before = batch_stats((await client.get("/metrics")).text, "decode")
            statuses = await asyncio.gather(*[until_served(client, i) for i in range(200)])
            after = batch_stats((await client.get("/metrics")).text, "decode")
        return list(statuses), before, after

    statuses, (batches0, rows0), (batches1, rows1) = asyncio.run(burst())
    assert statuses == [200] * 200
    batches, rows = batches1 - batches0, rows1 - rows0
    assert rows == 200
    assert batches < rows  # so at least one forward pass decoded more than one request


def test_batched_results_match_one_at_a_time(settings, serving):
    async def compare() -> tuple[list[bytes], list[bytes]]:
        async with serving(settings) as client:
            alone = [
                (await client.post("/sample", json={"n": 1, "seed": s})).content for s in range(8)
            ]
            together = await asyncio.gather(
                *[client.post("/sample", json={"n": 1, "seed": s}) for s in range(8)]
            )
        return alone, [r.content for r in together]

    alone, together = asyncio.run(compare())
    assert alone == together


def _batcher(fn=lambda key, rows: rows * 2, **knobs) -> MicroBatcher:
    """A batcher on its own thread; by default its "model" doubles every row."""
    defaults = dict(max_batch_size=8, max_wait_ms=1.0, queue_size=16)
    return MicroBatcher(
        "test", fn, InferenceScheduler(ThreadPoolExecutor(1)), **{**defaults, **knobs}
    )


def test_batcher_returns_each_caller_its_own_rows():
    async def run() -> list[torch.Tensor]:
        batcher = _batcher()
        batcher.start()
        try:
            return await asyncio.gather(
                *[batcher.submit("m", torch.full((k, 2), float(k))) for k in (1, 2, 3)]
            )
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert [r.tolist() for r in results] == [[[2.0, 2.0]], [[4.0, 4.0]] * 2, [[6.0, 6.0]] * 3]


def test_full_queue_answers_overloaded():
    async def run() -> list[object]:
        batcher = _batcher(queue_size=2)
        batcher.start()
        try:
            jobs = [batcher.submit("m", np.ones((1, 1), np.float32)) for _ in range(10)]
            return await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert any(isinstance(r, Overloaded) for r in results)
    assert any(isinstance(r, np.ndarray) for r in results)


def test_a_caller_past_its_deadline_stops_waiting_and_its_queued_rows_never_run():
    release = threading.Event()
    ran: list[float] = []

    def stuck(key, rows):
        release.wait(5)
        ran.append(rows.item())
        return rows

    async def run() -> object:
        batcher = _batcher(stuck, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit("m", torch.ones(1)))
            await asyncio.sleep(0.05)  # running, stuck
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):  # the guard's deadline, as in a request
                    await batcher.submit("m", torch.full((1,), 2.0))
            release.set()
            return await first
        finally:
            release.set()
            await batcher.stop()

    assert asyncio.run(run()).item() == 1.0
    assert ran == [1.0]  # the row whose caller gave up was dropped, not run


def test_jobs_still_queued_at_shutdown_get_shutting_down():
    release = threading.Event()

    def stuck(key, rows):
        release.wait(5)
        return rows

    async def run() -> list[object]:
        batcher = _batcher(stuck, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        jobs = [asyncio.ensure_future(batcher.submit("m", torch.ones(1))) for _ in range(3)]
        await asyncio.sleep(0.05)  # the first is running, the others wait in the queue
        await batcher.stop()
        release.set()
        return await asyncio.gather(*jobs, return_exceptions=True)

    shut = [r for r in asyncio.run(run()) if isinstance(r, ShuttingDown)]
    assert len(shut) >= 2
    assert all(r.status_code == 503 for r in shut)


def test_a_full_queue_is_503_with_retry_after_over_http(make_settings, serving):
    settings = make_settings(queue_size=1, max_batch_size=1, max_wait_ms=0)

    async def flood() -> list:
        async with serving(settings) as client:
            return await asyncio.gather(
                *[client.post("/sample", json={"n": 1, "seed": i}) for i in range(50)]
            )

    responses = asyncio.run(flood())
    statuses = {r.status_code for r in responses}
    assert statuses == {200, 503}
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert "retry" in refused.json()["detail"]
