"""`MicroBatcher`: merges concurrent requests into forward passes without waiting for nothing.

When the model is idle a request runs at once; requests that arrive while the model is busy queue
up and form the next batch, so batches grow with the load by themselves and a lone request never
waits for company. A batch waits only for jobs known to be on their way (`more_coming`: uploads
still being decoded) for at most `more_coming_wait_s`, or for `max_wait_ms` when that is opted in.
A batch holds at most `batch_rows()` rows (about one slice of the inference thread's time, see
`app.inference.scheduler`), and it is formed, or topped up, when its turn on the thread comes.

With `lone_rows_now` (a process with one core, see `app.inference.threads.lone_rows_now`) a lone
row that finds the scheduler idle runs right in `submit` instead: with one core the thread cannot
run beside the loop anyway, and the hop there and back is worth 5 % or more of `/sample` at c=1
(`docs/benchmarks.md`). That happens once per turn of the loop, so a burst still shares a batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from app.errors import InferenceFailed, NotReady, Overloaded, ShuttingDown
from app.inference import metrics
from app.inference.admission import Booking
from app.inference.scheduler import InferenceScheduler

log = logging.getLogger("app.inference.engine")

K = TypeVar("K")
Output = np.ndarray | tuple[np.ndarray, ...]


@dataclass(eq=False, slots=True)
class _Job(Generic[K]):
    key: K
    rows: np.ndarray
    future: asyncio.Future
    size: int  # rows.shape[0], kept
    booking: Booking | None = None
    running: bool = field(default=False)  # in a batch on the thread: its booking stays

    def release_if_waiting(self, _: asyncio.Future | None = None) -> None:
        """A job that left before its batch ran gives its booking back at once."""
        if not self.running and self.booking is not None:
            self.booking.close()


class MicroBatcher(Generic[K]):
    """Merges concurrent `submit` calls into one call of `fn(key, rows)` on the inference thread.

    `fn` takes a batch along axis 0 and returns an array (or tuple of arrays) with the same leading
    size; each caller gets its own rows back. Jobs are only merged when they share `key` (the model
    they started on). One batch runs at a time, in a light turn of `scheduler`; the next is
    whatever queued meanwhile. A job larger than a batch runs alone (the engine sends those to
    the heavy lane in slices instead).
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[K, np.ndarray], Output],
        scheduler: InferenceScheduler,
        *,
        max_batch_size: int,
        batch_rows: Callable[[], int] | None = None,
        max_wait_ms: float = 0.0,
        queue_size: int,
        lone_rows_now: bool = False,
    ) -> None:
        self.name = name
        self._fn = fn
        self._scheduler = scheduler
        self._batch_rows = batch_rows or (lambda: max_batch_size)
        self._max_wait = max_wait_ms / 1000.0
        self._lone_rows_now = lone_rows_now and self._max_wait == 0
        self._ran_now = False  # a lone row ran in `submit` during this turn of the event loop
        self._queue: asyncio.Queue[_Job[K]] = self._new_queue(queue_size)
        self._task: asyncio.Task | None = None
        # Set by the owner (`Engine.batch_uploads_with`): whether more jobs are on their way
        # (uploads being decoded), and how long a batch may wait for them.
        self.more_coming: Callable[[], bool] | None = None
        self.more_coming_wait_s = 0.0
        self._batch_sizes = metrics.BATCH_SIZE.labels(op=name)
        metrics.QUEUE_DEPTH.labels(op=name).set_function(self._queue.qsize)
        metrics.QUEUE_CAPACITY.labels(op=name).set(queue_size)

    def _new_queue(self, maxsize: int) -> asyncio.Queue[_Job[K]]:
        """The queue of waiting jobs (a hook: `TracedMicroBatcher` notes each job put in it)."""
        return asyncio.Queue(maxsize=maxsize)

    def start(self) -> None:
        self._scheduler.start()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(ShuttingDown())

    async def submit(self, key: K, rows: np.ndarray, booking: Booking | None = None) -> Output:
        """Queues `rows` and waits for their outputs; `booking` is given back once the thread is
        done with them (or skips them because the caller stopped waiting)."""
        if self._task is None:
            if booking is not None:
                booking.close()
            raise NotReady()
        if (
            self._lone_rows_now
            and rows.shape[0] == 1
            and self._scheduler.idle
            and not self._ran_now
            and self._queue.empty()
        ):
            try:
                return self._run_now(key, rows)
            finally:
                if booking is not None:
                    booking.close()
        if self._queue.full():
            if booking is not None:
                booking.close()
            raise Overloaded(f"{self.name} queue is full, retry shortly")
        future = asyncio.get_running_loop().create_future()
        job = _Job(key, rows, future, rows.shape[0], booking)
        future.add_done_callback(job.release_if_waiting)
        self._queue.put_nowait(job)
        return await future  # the request's deadline (the guard's timeout) cancels this wait

    def _run_now(self, key: K, rows: np.ndarray) -> Output:
        """A lone row with the model idle, run right here: no queue, no task switch. Once per
        turn of the loop: requests that arrived in the same turn (a burst) queue behind it and
        share the next batch, so load still forms batches."""
        self._ran_now = True
        asyncio.get_running_loop().call_soon(self._next_turn)
        self._batch_sizes.observe(1)
        try:
            return self._fn(key, rows)
        except Exception:
            log.exception("a lone row failed in %s", self.name)
            raise InferenceFailed() from None

    def _next_turn(self) -> None:
        self._ran_now = False

    async def _run(self) -> None:
        carry: _Job[K] | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            jobs, carry = await self._collect(first)
            async with self._scheduler.light_turn():
                if carry is None:  # what queued while this batch waited for its turn
                    carry = self._top_up(jobs)
                jobs = [j for j in jobs if not j.future.done()]  # left while queued
                if jobs:
                    await self._execute(jobs)

    async def _collect(self, first: _Job[K]) -> tuple[list[_Job[K]], _Job[K] | None]:
        """`first` and whatever queued behind it that fits; waits only for jobs on their way
        (`more_coming`) or when `max_wait` opts in."""
        jobs = [first]
        started = time.monotonic()
        while True:
            carry = self._top_up(jobs)
            if carry is not None or self._rows(jobs) >= self._batch_rows():
                return jobs, carry
            remaining = self._wait_left(started)
            if remaining <= 0:
                return jobs, None
            try:
                async with asyncio.timeout(remaining):
                    job = await self._queue.get()
            except TimeoutError:
                return jobs, None
            if not self._fits(jobs, job):
                return jobs, job
            jobs.append(job)

    def _top_up(self, jobs: list[_Job[K]]) -> _Job[K] | None:
        """Adds queued jobs to `jobs` while they fit; returns the first that does not."""
        while self._rows(jobs) < self._batch_rows():
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
            if not self._fits(jobs, job):
                return job
            jobs.append(job)
        return None

    def _fits(self, jobs: list[_Job[K]], job: _Job[K]) -> bool:
        return job.key is jobs[0].key and self._rows(jobs) + job.size <= self._batch_rows()

    @staticmethod
    def _rows(jobs: list[_Job[K]]) -> int:
        return sum(j.size for j in jobs)

    def _wait_left(self, started: float) -> float:
        """How much longer this batch may wait for company: `max_wait` when opted in, and while
        more jobs are on their way, up to `more_coming_wait_s`."""
        waited = time.monotonic() - started
        left = self._max_wait - waited
        if self.more_coming is not None and self.more_coming():
            left = max(left, self.more_coming_wait_s - waited)
        return left

    async def _execute(self, jobs: list[_Job[K]]) -> None:
        batch = jobs[0].rows if len(jobs) == 1 else np.concatenate([j.rows for j in jobs])
        size = batch.shape[0]
        self._batch_sizes.observe(size)
        for job in jobs:
            job.running = True
        try:
            loop = asyncio.get_running_loop()
            executor = self._scheduler.executor
            out = await loop.run_in_executor(executor, self._fn, jobs[0].key, batch)
        except asyncio.CancelledError:  # `stop`: nobody will hand these jobs their rows
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(ShuttingDown())
            raise
        except Exception:  # a failed batch fails its callers, never the batcher
            log.exception("batch of %d failed in %s", size, self.name)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(InferenceFailed())
            return
        finally:
            for job in jobs:
                job.running = False
                if job.booking is not None:
                    job.booking.finish()
        if len(jobs) == 1:
            parts: list[Output] = [out]
        else:
            bounds = np.cumsum([j.size for j in jobs])[:-1]
            parts = (
                list(zip(*(np.split(t, bounds) for t in out), strict=True))
                if isinstance(out, tuple)
                else np.split(out, bounds)
            )
        for job, part in zip(jobs, parts, strict=True):
            if not job.future.done():
                job.future.set_result(part)
