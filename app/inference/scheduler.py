"""`InferenceScheduler`: the one inference thread, handed one slice of work at a time.

Every forward pass runs on one thread, so whatever waits for it waits behind everything handed to
it first. Handing the thread whole requests (a guided `/sample` of 256 digits is half a second)
made a one-digit request wait seconds behind a flood of heavy ones. Here work arrives in two lanes
and the thread is given one slice at a time, the next one chosen when the last one ends:

- light: requests whose rows fit one slice, merged by the batchers (`MicroBatcher`), which ask for a
  turn (`light_turn`) and form their batch when it comes;
- heavy: larger requests (`SlicedJob`), run one slice per turn in the order they were admitted, so
  the first admitted finishes first, and a job whose request is gone loses its remaining slices.

Light turns come first; when heavy work waits, it gets every `light_turns_per_heavy + 1`-th turn,
so a light request waits behind at most one slice of heavy work unless light work alone fills the
thread, and heavy work still moves under a stream of light requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any, Protocol

from app.errors import InferenceFailed, ShuttingDown

log = logging.getLogger("app.inference.scheduler")

LIGHT_TURNS_PER_HEAVY = 4


class SlicedJob(Protocol):
    """Heavy work in slices: `step` runs one on the inference thread and says whether it was the
    last; `settle` (on the loop, after each step) gives back the booking of the rows done,
    `finish` (after the last) tells admission how long the job took through its lane, and
    `close` gives back all of it, once the job ends or is dropped."""

    def step(self) -> bool: ...

    def settle(self) -> None: ...

    def finish(self) -> None: ...

    def result(self) -> Any: ...

    def close(self) -> None: ...


class _Heavy:
    __slots__ = ("job", "future")

    def __init__(self, job: SlicedJob, future: asyncio.Future) -> None:
        self.job = job
        self.future = future


class InferenceScheduler:
    """Owns the inference thread's turns: light batches first, heavy slices in between."""

    def __init__(self, executor: Executor, light_turns_per_heavy: int = LIGHT_TURNS_PER_HEAVY):
        self.executor = executor
        self._light_turns_per_heavy = light_turns_per_heavy
        self._light: deque[asyncio.Future] = deque()  # batchers waiting for a turn
        self._heavy: deque[_Heavy] = deque()  # admitted heavy jobs, oldest first
        self._light_streak = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._running = False

    @property
    def idle(self) -> bool:
        """Nothing runs and nothing waits: a lone row may run at once (`MicroBatcher`)."""
        return not self._running and not self._light and not self._heavy

    def start(self) -> None:
        """Starts serving turns (once; every batcher that shares it calls this)."""
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while self._heavy:
            self._end(self._heavy.popleft(), error=ShuttingDown())
        while self._light:
            turn = self._light.popleft()
            if not turn.done():
                turn.set_exception(ShuttingDown())

    @contextlib.asynccontextmanager
    async def light_turn(self) -> AsyncIterator[None]:
        """Waits for a light turn and holds the thread until the block ends (a batcher runs its
        batch on `executor` inside it)."""
        turn = asyncio.get_running_loop().create_future()
        self._light.append(turn)
        self._wake.set()
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._running = False  # granted as the waiter gave up: hand it back
                turn.result().set_result(None)
            elif turn in self._light:
                self._light.remove(turn)
            raise
        finished: asyncio.Future = turn.result()
        try:
            yield
        finally:
            self._running = False  # at once: a lone row that arrives next may run now
            finished.set_result(None)

    async def run_heavy(self, job: SlicedJob) -> Any:
        """Runs `job` slice by slice in admission order and returns its result; if the caller
        stops waiting, the slices not yet started are dropped (and `close` gives back their
        booking)."""
        if self._task is None:
            job.close()
            raise ShuttingDown()
        future = asyncio.get_running_loop().create_future()
        self._heavy.append(_Heavy(job, future))
        self._wake.set()
        return await future

    async def _serve(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._light or self._heavy:
                self._drop_abandoned()
                if self._light and (
                    not self._heavy or self._light_streak < self._light_turns_per_heavy
                ):
                    self._light_streak += 1
                    await self._grant_light(self._light.popleft())
                elif self._heavy:
                    self._light_streak = 0
                    await self._run_slice(self._heavy[0])

    def _drop_abandoned(self) -> None:
        """Heavy jobs whose requests stopped waiting: their remaining slices are not run."""
        if any(h.future.done() for h in self._heavy):
            for heavy in [h for h in self._heavy if h.future.done()]:
                self._heavy.remove(heavy)
                heavy.job.close()

    async def _grant_light(self, turn: asyncio.Future) -> None:
        if turn.done():  # its batcher stopped waiting
            return
        finished = asyncio.get_running_loop().create_future()
        turn.set_result(finished)
        self._running = True  # until the turn's block ends (`light_turn`)
        await asyncio.shield(finished)

    async def _run_slice(self, heavy: _Heavy) -> None:
        self._running = True
        try:
            loop = asyncio.get_running_loop()
            last = await loop.run_in_executor(self.executor, heavy.job.step)
        except asyncio.CancelledError:
            raise  # `stop` ends the job
        except Exception:
            log.exception("a heavy job failed")
            self._heavy.remove(heavy)
            self._end(heavy, error=InferenceFailed())
            return
        finally:
            self._running = False
        heavy.job.settle()
        if last:
            heavy.job.finish()
            self._heavy.remove(heavy)
            self._end(heavy)

    @staticmethod
    def _end(heavy: _Heavy, error: BaseException | None = None) -> None:
        heavy.job.close()
        if heavy.future.done():
            return
        if error is not None:
            heavy.future.set_exception(error)
        else:
            heavy.future.set_result(heavy.job.result())
