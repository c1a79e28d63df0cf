"""The inference thread's turns (app/inference/scheduler.py) on the shipped model, in process.

What issue 26 found: a booking freed while its rows still ran, a one-digit request waiting behind
a whole guided request, heavy work that ran on after its request was gone. Each test below fails
on the engine before the scheduler (one executor, whole requests, bookings freed on cancel).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from app.errors import Overloaded
from app.inference.admission import HEAVY, LIGHT, InferenceGate
from app.inference.engine import Engine
from app.inference.scheduler import InferenceScheduler
from app.inference.sliced import RowsInSlices
from models.classifier import GUIDE_PATH

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "mnist-vae.pt"


class Recording:
    """Wraps a runner: logs each forward pass as (op, rows) and can hold the thread in one."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.calls: list[tuple[str, int]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def _logged(self, op: str, rows: np.ndarray):
        self.calls.append((op, len(rows)))
        self.entered.set()
        assert self.hold.wait(10)
        return getattr(self.runner, op)(rows)

    def encode(self, x):
        return self._logged("encode", x)

    def decode(self, z):
        return self._logged("decode", z)

    def reconstruct(self, x):
        return self._logged("reconstruct", x)


@pytest.fixture
def engine_settings(make_settings):
    # Fixed costs, so slices and lanes do not depend on this machine's speed.
    return make_settings(
        checkpoint=SHIPPED,
        digit_guide=str(GUIDE_PATH),
        max_batch_size=64,
        inline_lone_batches="off",
    )


async def _start(settings) -> tuple[Engine, Recording]:
    engine = Engine(settings)
    await engine.start()
    recording = Recording(engine.current.runner)
    engine._current = dataclasses.replace(engine.current, runner=recording)
    gate = engine.admission
    gate.seconds_per_row.update({"decode": 1e-3, "classify": 1e-3})  # slices of 12 rows
    gate.slice_s = 0.025
    return engine, recording


def run(settings, scenario) -> None:
    async def main() -> None:
        engine, recording = await _start(settings)
        try:
            await scenario(engine, recording)
        finally:
            recording.hold.set()
            await engine.stop()

    asyncio.run(main())


def test_a_booking_is_held_until_the_thread_finishes_the_rows(engine_settings):
    """A request that stops waiting (its deadline) while its batch runs keeps its booking until
    the thread is done; only then may the next requests have that time."""

    async def scenario(engine: Engine, recording: Recording) -> None:
        m = engine.current
        recording.hold.clear()
        waiting = asyncio.ensure_future(engine.decode(m, np.zeros((4, 32), np.float32)))
        assert await asyncio.to_thread(recording.entered.wait, 5)
        booked = engine.admission.pending_s
        assert booked > 0
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert engine.admission.pending_s == booked  # the rows are still running
        recording.hold.set()
        for _ in range(200):
            if engine.admission.pending_s == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.admission.pending_s == 0

    run(engine_settings, scenario)


def test_a_light_request_waits_behind_at_most_one_heavy_slice(engine_settings):
    """A guided request for 64 digits is many slices; a one-row decode that arrives while its
    first slice runs goes next, not after the whole request."""

    async def scenario(engine: Engine, recording: Recording) -> None:
        m = engine.current
        recording.hold.clear()
        heavy = asyncio.ensure_future(
            engine.sample(m, 64, 7, 1.0, digits=[i % 10 for i in range(64)])
        )
        assert await asyncio.to_thread(recording.entered.wait, 5)
        light = asyncio.ensure_future(engine.decode(m, np.zeros((1, 32), np.float32)))
        await asyncio.sleep(0.05)
        recording.hold.set()
        await light
        assert not heavy.done()
        assert recording.calls[:2] == [("decode", 12), ("decode", 1)]
        z, images = await heavy
        assert images.shape == (64, 1, 32, 32)

    run(engine_settings, scenario)


def test_heavy_requests_finish_in_the_order_they_were_admitted(engine_settings):
    async def scenario(engine: Engine, recording: Recording) -> None:
        m = engine.current
        order: list[str] = []

        async def decode(name: str, rows: int) -> None:
            await engine.decode(m, np.zeros((rows, 32), np.float32))
            order.append(name)

        recording.hold.clear()
        first = asyncio.ensure_future(decode("first", 60))
        assert await asyncio.to_thread(recording.entered.wait, 5)
        second = asyncio.ensure_future(decode("second", 60))
        await asyncio.sleep(0.05)
        recording.hold.set()
        await asyncio.gather(first, second)
        assert order == ["first", "second"]
        sizes = [rows for _, rows in recording.calls]
        assert sizes == [25] * 2 + [10] + [25] * 2 + [10]  # 25 ms of 1 ms rows a slice, in turn

    run(engine_settings, scenario)


def test_a_heavy_request_that_is_gone_loses_its_remaining_slices(engine_settings):
    async def scenario(engine: Engine, recording: Recording) -> None:
        m = engine.current
        recording.hold.clear()
        doomed = asyncio.ensure_future(engine.decode(m, np.zeros((250, 32), np.float32)))
        assert await asyncio.to_thread(recording.entered.wait, 5)
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        assert engine.admission.pending_s > 0  # its running slice is still booked
        recording.hold.set()
        after = await engine.decode(m, np.zeros((1, 32), np.float32))
        assert after.shape == (1, 1, 32, 32)
        assert recording.calls == [("decode", 25), ("decode", 1)]  # 9 slices never ran
        assert engine.admission.pending_s == 0

    run(engine_settings, scenario)


def test_sliced_rows_come_back_in_order_with_tuple_outputs():
    gate = InferenceGate(slice_s=0.003, light_queue_s=1.0, max_rows=64)
    gate.seconds_per_row["pairs"] = 1e-3
    booking = gate.book(HEAVY, gate.cost(10, "pairs"), time_left_s=10)
    seen: list[int] = []

    def pairs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append(len(rows))
        return rows + 1, rows * 10

    async def main() -> tuple[np.ndarray, np.ndarray]:
        scheduler = InferenceScheduler(ThreadPoolExecutor(1))
        scheduler.start()
        job = RowsInSlices("pairs", pairs, np.arange(10.0), gate, booking)
        try:
            return await scheduler.run_heavy(job)
        finally:
            await scheduler.stop()

    plus, times = asyncio.run(main())
    assert plus.tolist() == [i + 1.0 for i in range(10)]
    assert times.tolist() == [i * 10.0 for i in range(10)]
    assert seen[:3] == [3, 3, 3] and sum(seen) == 10
    assert gate.pending_s == 0


def test_light_work_is_refused_past_its_queue_and_heavy_past_half_the_time_left():
    gate = InferenceGate(slice_s=0.025, light_queue_s=0.06, max_rows=64)
    gate.seconds_per_row["decode"] = 1e-3
    assert gate.lane(25, "decode") == LIGHT and gate.lane(26, "decode") == HEAVY
    light = [gate.book(LIGHT, 0.02, time_left_s=10) for _ in range(3)]
    with pytest.raises(Overloaded) as refused:
        gate.book(LIGHT, 0.02, time_left_s=10)
    assert refused.value.retry_after >= 1
    heavy = [gate.book(HEAVY, 2.0, time_left_s=10), gate.book(HEAVY, 2.0, time_left_s=10)]
    with pytest.raises(Overloaded):
        gate.book(HEAVY, 2.0, time_left_s=10)  # 6 s would not fit in half of 10 s
    assert gate.light_full(10)  # any light job would be refused now
    for booking in light + heavy:
        booking.close()
        booking.close()  # twice is once
    assert gate.pending_s == 0
