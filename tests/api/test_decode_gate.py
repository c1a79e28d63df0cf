"""The decode gate releases on every path (issue 26, point 5): cancellations never leak a slot."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable

import pytest

from app.errors import Overloaded
from app.inference import admission
from app.inference.admission import DecodeGate


class BadImage(Exception):
    """A decode that fails, told apart from anything the gate itself might raise."""


def _assert_idle(gate: DecodeGate) -> None:
    assert not gate.busy and not gate._waiters
    assert (gate._running, gate._pixels_running, gate._pixels_waiting) == (0, 0, 0)


def test_a_request_cancelled_while_its_decode_is_queued_on_a_thread_gives_its_slot_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The idle trim holds the only decode thread when an upload is admitted: if the request
    gives up before the thread is free, its decode never starts, and the slot must come back."""
    let_go = threading.Event()
    monkeypatch.setattr(admission, "give_back_freed_memory", let_go.wait)
    gate = DecodeGate(concurrency=1, pixel_budget=100)
    ran: list[str] = []

    async def main() -> str:
        try:
            gate._trim_if_idle()  # as `_release` schedules it after a large decode
            queued = asyncio.ensure_future(
                gate.run(100, lambda: ran.append("queued"), time_left_s=60)
            )
            await asyncio.sleep(0)  # admitted at once (the gate is idle), queued behind the trim
            assert gate._running == 1
            queued.cancel()  # e.g. the client hung up
            with pytest.raises(asyncio.CancelledError):
                await queued
            _assert_idle(gate)
        finally:
            let_go.set()
        return await gate.run(100, lambda: "next", time_left_s=60)

    try:
        assert asyncio.run(main()) == "next"
    finally:
        gate.shutdown()
    assert ran == []
    _assert_idle(gate)


def test_waiters_that_give_up_together_leave_the_queue_exact() -> None:
    """The first cancelled waiter's exit wakes the queue, which drops the second (cancelled too)
    before its own exit runs: that exit must not look for it in the queue again (a 500)."""
    gate = DecodeGate(concurrency=2, pixel_budget=100)
    release = threading.Event()

    async def main() -> list[object]:
        try:
            running = asyncio.ensure_future(gate.run(60, release.wait, time_left_s=60))
            await asyncio.sleep(0)
            big = asyncio.ensure_future(gate.run(100, lambda: "big", time_left_s=60))
            small = asyncio.ensure_future(gate.run(40, lambda: "small", time_left_s=60))
            await asyncio.sleep(0)  # both wait: `small` would fit, but it is behind `big`
            assert [w.pixels for w in gate._waiters] == [100, 40]
            big.cancel()  # its exit wakes the queue, which meets `small` already cancelled
            small.cancel()
            outcomes = await asyncio.gather(big, small, return_exceptions=True)
        finally:
            release.set()
        await running
        return outcomes

    try:
        outcomes = asyncio.run(main())
    finally:
        gate.shutdown()
    assert [type(o) for o in outcomes] == [asyncio.CancelledError] * 2, outcomes
    _assert_idle(gate)


def test_random_decodes_and_cancellations_always_leave_the_gate_idle() -> None:
    """Seeded chaos: threads held outside the gate (as by the idle trim), decodes that fail or
    cancel others from their thread, deadlines too short, and requests that give up at random."""
    rng = random.Random(26)
    gate = DecodeGate(concurrency=3, pixel_budget=1000)

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Future] = []

        def decode(kind: str, victim: int) -> Callable[[], str]:
            def fn() -> str:
                if kind == "fails":
                    raise BadImage
                if kind == "cancels" and victim < len(tasks):
                    loop.call_soon_threadsafe(tasks[victim].cancel)
                return kind

            return fn

        for _ in range(40):
            hold = threading.Event()
            for _ in range(rng.randrange(3)):
                gate._executor.submit(hold.wait)
            for _ in range(12):
                fn = decode(rng.choice(["ok", "ok", "fails", "cancels"]), rng.randrange(480))
                time_left_s = rng.choice([60.0, 60.0, 60.0, 2e-4])
                tasks.append(asyncio.ensure_future(gate.run(rng.randint(1, 1000), fn, time_left_s)))
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            live = [task for task in tasks if not task.done()]
            for task in rng.sample(live, rng.randrange(len(live) + 1)):
                task.cancel()
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            hold.set()
        # A leaked slot or pixel budget stalls the queue for good: a guard, not a timing check.
        _, stuck = await asyncio.wait(tasks, timeout=10)
        for task in stuck:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert not stuck, f"{len(stuck)} requests never got a decode slot"
        # Every thread has handed its slot back to the loop (and those calls ran) once this returns.
        await asyncio.to_thread(gate._executor.shutdown)
        return outcomes

    outcomes = asyncio.run(main())
    allowed = (str, asyncio.CancelledError, Overloaded, BadImage)
    assert [o for o in outcomes if not isinstance(o, allowed)] == []
    assert sum(isinstance(o, asyncio.CancelledError) for o in outcomes) > 40
    _assert_idle(gate)
