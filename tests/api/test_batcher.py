"""The batcher never waits for nothing: a lone request runs at once, a burst shares a batch, and a
batch never holds more than `max_batch_size` rows (larger jobs: tests/api/test_scheduler.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from app.config import Settings
from app.inference.batching import MicroBatcher
from app.inference.scheduler import InferenceScheduler


class Recorder:
    """`fn` for a batcher: doubles its rows, records each batch's size, and can hold a batch."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, key: str, rows: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(rows))
        self.started.set()
        assert self.release.wait(5)
        return rows * 2


def batcher(fn: Callable[[str, torch.Tensor], torch.Tensor], **knobs) -> MicroBatcher:
    defaults = dict(max_batch_size=8, queue_size=64)
    executor = InferenceScheduler(ThreadPoolExecutor(1, thread_name_prefix="inference"))
    return MicroBatcher("test", fn, executor, **{**defaults, **knobs})


def test_the_default_is_not_to_wait():
    assert Settings(_env_file=None).max_wait_ms == 0


def test_a_lone_request_does_not_wait_for_a_batch():
    """With `max_wait_ms=5000` opted in, a lone request would wait 5 s; by default it runs now."""

    async def run(**knobs) -> float:
        fn = Recorder()
        b = batcher(fn, **knobs)
        b.start()
        try:
            start = time.perf_counter()
            out = await b.submit("m", torch.ones(1, 2))
            assert out.tolist() == [[2.0, 2.0]]
            assert fn.sizes == [1]
            return time.perf_counter() - start
        finally:
            await b.stop()

    assert asyncio.run(run()) < 1.0
    assert asyncio.run(run(max_wait_ms=1500)) >= 1.4  # the opt-in still waits for company


def test_requests_arriving_during_a_batch_form_the_next_batch():
    fn = Recorder()

    async def run() -> list[torch.Tensor]:
        b = batcher(fn)
        b.start()
        try:
            fn.release.clear()
            first = asyncio.ensure_future(b.submit("m", torch.zeros(1, 1)))
            assert await asyncio.to_thread(fn.started.wait, 5)  # the lone job runs at once
            burst = [asyncio.ensure_future(b.submit("m", torch.full((1, 1), i))) for i in range(11)]
            await asyncio.sleep(0.05)  # all eleven are queued behind the running batch
            fn.release.set()
            return [await first, *await asyncio.gather(*burst)]
        finally:
            fn.release.set()
            await b.stop()

    results = asyncio.run(run())
    assert [r.item() for r in results] == [0.0] + [2.0 * i for i in range(11)]
    assert fn.sizes == [1, 8, 3]  # the burst filled the next batch up to max_batch_size


def test_inline_a_lone_row_runs_at_once_on_the_loop_and_a_burst_still_batches():
    calls: list[tuple[int, str]] = []

    def fn(key: str, rows: torch.Tensor) -> torch.Tensor:
        calls.append((len(rows), threading.current_thread().name))
        return rows * 2

    async def run() -> None:
        b = batcher(fn, lone_rows_now=True)
        b.start()
        try:
            assert (await b.submit("m", torch.ones(1, 1))).item() == 2.0
            await asyncio.sleep(0)  # the next request comes in a later turn of the loop
            assert (await b.submit("m", torch.ones(1, 1))).item() == 2.0  # at once again
            assert (await b.submit("m", torch.ones(3, 1))).sum().item() == 6.0  # not a lone row
            burst = await asyncio.gather(*[b.submit("m", torch.ones(1, 1)) for _ in range(5)])
            assert [r.item() for r in burst] == [2.0] * 5
        finally:
            await b.stop()

    asyncio.run(run())
    loop_thread = threading.main_thread().name
    assert calls[0] == calls[1] == (1, loop_thread)
    assert calls[2][0] == 3 and calls[2][1].startswith("inference")
    # The burst arrived in one turn of the loop: its first row ran at once, the other four
    # queued behind it and shared one batch.
    assert calls[3] == (1, loop_thread)
    assert calls[4][0] == 4 and calls[4][1].startswith("inference")
    assert len(calls) == 5


def test_lone_rows_run_now_by_default_only_with_one_cpu_core(monkeypatch):
    from app.inference import threads

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0})
    assert threads.lone_rows_now("auto", "cpu")
    assert not threads.lone_rows_now("off", "cpu")
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    assert not threads.lone_rows_now("auto", "cpu")
    assert threads.lone_rows_now("on", "cpu")
    assert not threads.lone_rows_now("auto", "cuda")


def test_a_batch_waits_for_uploads_on_their_way_and_only_for_them():
    """While `more_coming` says uploads are being decoded, a batch waits (bounded) to take them;
    when nothing is on its way it runs at once."""
    on_the_way = [True]

    async def run() -> tuple[list[int], float, float]:
        fn = Recorder()
        b = batcher(fn)
        b.more_coming = lambda: on_the_way[0]
        b.more_coming_wait_s = 5.0
        b.start()
        try:
            first = asyncio.ensure_future(b.submit("m", torch.ones(1, 1)))
            await asyncio.sleep(0.2)
            assert not first.done() and fn.sizes == []  # held for the upload being decoded
            on_the_way[0] = False  # its decode finished: it arrives, and nothing else is coming
            start = time.perf_counter()
            await asyncio.gather(first, b.submit("m", torch.ones(1, 1)))
            together = time.perf_counter() - start
            start = time.perf_counter()
            await b.submit("m", torch.ones(1, 1))  # nothing on its way: no wait at all
            alone = time.perf_counter() - start
            return fn.sizes, together, alone
        finally:
            await b.stop()

    sizes, together, alone = asyncio.run(run())
    assert sizes == [2, 1]
    assert together < 1.0 and alone < 1.0  # far below the 5 s bound


def test_the_wait_for_uploads_is_bounded():
    async def run() -> float:
        fn = Recorder()
        b = batcher(fn)
        b.more_coming = lambda: True  # a decode that never delivers (another route's, a failure)
        b.more_coming_wait_s = 0.3
        b.start()
        try:
            start = time.perf_counter()
            await b.submit("m", torch.ones(1, 1))
            return time.perf_counter() - start
        finally:
            await b.stop()

    assert 0.25 <= asyncio.run(run()) < 2.0


def test_a_lone_row_that_fails_fails_its_caller_not_the_batcher():
    from app.errors import InferenceFailed

    calls = []

    def fn(key: str, rows: torch.Tensor) -> torch.Tensor:
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("the model broke once")
        return rows * 2

    async def run() -> float:
        b = batcher(fn, lone_rows_now=True)
        b.start()
        try:
            try:
                await b.submit("m", torch.ones(1, 1))
            except InferenceFailed:
                pass
            else:
                raise AssertionError("the failure was not reported")
            await asyncio.sleep(0)  # a later turn of the loop
            return (await b.submit("m", torch.ones(1, 1))).item()
        finally:
            await b.stop()

    assert asyncio.run(run()) == 2.0
    assert calls == [1, 1]
