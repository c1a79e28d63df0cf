"""Admission control for the whole request: image decodes and inference, each with an estimate.

A small PNG can hold 4096x4096 16-bit pixels, which take seconds and hundreds of megabytes to
decode; and a queue that only refuses when full lets a flood of heavy requests wait until they
time out (504) instead of being told to come back (503). Both gates admit work only while it can
finish before the request's deadline, and otherwise answer 503 with `Retry-After` at once:

- `DecodeGate` runs at most `concurrency` decodes, on its own threads, with at most
  `pixel_budget` pixels among them (two maximal images by default), in arrival order. It learns
  the seconds per pixel as it goes, and refuses a decode whose wait plus run would pass the
  request's deadline.
- `InferenceGate` books the estimated seconds of inference work (rows times the learned seconds
  per row of each operation, which share one inference thread) in two lanes, light and heavy
  (`app.inference.scheduler`), until the thread has done that work, and refuses a job that would
  wait too long: light work waits at most `VAE_LIGHT_QUEUE_MS`, heavy work must fit in half the
  request's time left (`app.deadline`), the other half kept for the response and variance.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from app.errors import Overloaded
from app.inference.memory import TRIM_AFTER_PIXELS, give_back_freed_memory

T = TypeVar("T")

# Estimates until the first measurements replace them (docs/benchmarks.md has the real ones).
PRIOR_DECODE_S_PER_PIXEL = 4e-7
LIGHT, HEAVY = "light", "heavy"
# Heavy work is admitted while all of it would finish within this share of the request's time
# left: the rest is headroom for the light turns between its slices, the response and variance.
HEAVY_SHARE_OF_TIME_LEFT = 0.5
DECODE_NICENESS = 10  # decode threads' `nice` above the rest of the process
IDLE_TRIM_DELAY_S = 0.5  # after the last large decode, time for its request to finish
PRIOR_INFERENCE_S_PER_ROW = 2e-3
EWMA_WEIGHT = 0.2
STRETCH_SAMPLE_MIN_S = 0.01  # light work booked ahead of a job for its wait to be a sample
MAX_STRETCH = 8.0
MAX_RETRY_AFTER_S = 10  # the longest `ReturnBook` makes a refused client wait
LIGHT_PIPELINE_JOBS = 2  # light jobs always admitted whatever the lane's limit: one runs, one waits


# The route a request came in on, set for its task when it is admitted from its head: the light
# lane learns each kind's typical job by it, so a one-digit `/sample` is weighed at the head as
# itself, not as the average job of a lane full of `/v2` batches (which refused it for seconds).
REQUEST_KIND: ContextVar[str | None] = ContextVar("request_kind", default=None)


def _ewma(average: float, sample: float) -> float:
    """The running average with `sample` in; the first sample is the first estimate."""
    average = average or sample
    return average + EWMA_WEIGHT * (sample - average)


def retry_after(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))


class ReturnBook:
    """When refused clients are told to come back (`Retry-After`, whole seconds), spread so that
    the clients told to come back in any one second are about as many as can be served in it.

    A flood's clients that all get "1" come back together a second later, and the event loop then
    spends that moment refusing nearly all of them while the inference thread runs dry, and a
    light request that arrives in the middle waits behind the burst."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._promised: dict[int, int] = {}  # second (of `clock`) -> clients told to come then

    def come_back_after(self, earliest_s: int, job_s: float, workers: int = 1) -> int:
        """`appointment` for jobs of `job_s` seconds each, run `workers` at a time."""
        return self.appointment(earliest_s, max(1, int(workers / max(job_s, 1e-4))))

    def appointment(self, earliest_s: int, per_second: int) -> int:
        """Seconds from now to the first second, `earliest_s` or later, that has room."""
        now = int(self._clock())
        wait = max(1, earliest_s)
        while self._promised.get(now + wait, 0) >= per_second and wait < MAX_RETRY_AFTER_S:
            wait += 1
        self._promised[now + wait] = self._promised.get(now + wait, 0) + 1
        if len(self._promised) > 2 * MAX_RETRY_AFTER_S:
            self._promised = {t: n for t, n in self._promised.items() if t > now}
        return wait


class IncomingUpload:
    """An upload whose head was admitted and whose body is still arriving, held at the gate's
    typical upload until it reaches `DecodeGate.run` or its request ends: the heads of a burst of
    uploads arrive together, and without it every body would be read before the gate refused
    most of them (256 clients of 12 MP stalled the loop for 3 s, docs/benchmarks.md)."""

    __slots__ = ("_gate", "_pixels")

    def __init__(self, gate: DecodeGate, pixels: float) -> None:
        self._gate = gate
        self._pixels: float | None = pixels
        gate._incoming += 1
        gate._pixels_incoming += pixels

    def release(self) -> None:
        """Once: the upload reached the gate, or its request ended without reaching it."""
        if self._pixels is not None:
            self._gate._incoming -= 1
            self._gate._pixels_incoming -= self._pixels
            self._pixels = None


@dataclass(eq=False)
class _Waiter:
    pixels: int
    future: asyncio.Future = field(repr=False)
    queued: bool = True  # still in `_waiters`: `_wake` may drop it before its request sees it


def _lower_priority() -> None:
    """A decode thread yields the core to the event loop and the inference thread (Linux
    schedules threads one by one), so a flood of large uploads does not slow the light requests
    that would otherwise wait for a turn of the loop."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODE_NICENESS)


class DecodeGate:
    """Bounded, budgeted, deadline-aware image decoding (see the module doc)."""

    def __init__(self, concurrency: int, pixel_budget: int) -> None:
        self.concurrency = concurrency
        self.pixel_budget = pixel_budget
        self._executor = ThreadPoolExecutor(
            concurrency, thread_name_prefix="decode", initializer=_lower_priority
        )
        self._running = 0
        self._pixels_running = 0
        self._waiters: deque[_Waiter] = deque()
        self._pixels_waiting = 0
        self._incoming = 0  # uploads admitted from their head, bodies still arriving
        self._pixels_incoming = 0.0
        self.seconds_per_pixel = PRIOR_DECODE_S_PER_PIXEL
        self.typical_pixels = 0.0  # an upload's pixels, on average (for `refusal`)
        self.returns = ReturnBook()

    @property
    def busy(self) -> bool:
        """Uploads are being decoded or wait to be: they are on their way to a batcher."""
        return self._running > 0 or bool(self._waiters)

    def expected_wait_s(self, incoming: bool = True) -> float:
        """Time until a decode arriving now could start: the work ahead of it (with `incoming`,
        the uploads still arriving too), spread over the threads (the pixel budget may let fewer
        run at once, so this is a lower bound)."""
        ahead = self._pixels_running + self._pixels_waiting
        if incoming:
            ahead += self._pixels_incoming
        return ahead * self.seconds_per_pixel / self.concurrency

    def full(self, time_left_s: float) -> bool:
        """Whether an upload whose head arrives now would be refused, whatever its size: the
        work ahead and the uploads still arriving take the share of `time_left_s` that decoding
        may have."""
        return (self.busy or self._incoming > 0) and (
            self.expected_wait_s() >= HEAVY_SHARE_OF_TIME_LEFT * time_left_s
        )

    @property
    def incoming_uploads(self) -> int:
        """Uploads admitted from their head whose bodies have not reached the gate yet."""
        return self._incoming

    def incoming(self) -> IncomingUpload:
        """Holds a typical upload's pixels for a request whose body is arriving (none before the
        first upload: the gate has not seen one to go by)."""
        return IncomingUpload(self, self.typical_pixels)

    def refusal(self) -> Overloaded:
        """The 503 for an upload: come back once the work ahead is done, spread by `returns` at
        about the uploads the threads decode in a second, so refused clients do not return as
        one burst that finds the gate full again and leaves it idle after."""
        wait = self.expected_wait_s()
        upload_s = self.typical_pixels * self.seconds_per_pixel
        return Overloaded(
            f"image decoding is busy (about {wait:.1f} s of work ahead), retry shortly",
            retry_after=self.returns.come_back_after(retry_after(wait), upload_s, self.concurrency),
        )

    async def run(
        self,
        pixels: int,
        fn: Callable[[], T],
        time_left_s: float,
        incoming: IncomingUpload | None = None,
    ) -> T:
        """Runs `fn` on a decode thread once `pixels` fit, or raises `Overloaded` (503).
        `incoming`: what its request held while its body arrived, released here."""
        if incoming is not None:
            incoming.release()
        pixels = min(max(1, pixels), self.pixel_budget)
        wait = self.expected_wait_s(incoming=False) if (self._running or self._waiters) else 0.0
        own = pixels * self.seconds_per_pixel
        limit = HEAVY_SHARE_OF_TIME_LEFT * time_left_s  # the rest: inference, answer, variance
        if (wait and wait + own > limit) or own > time_left_s:
            raise self.refusal()
        self.typical_pixels = _ewma(self.typical_pixels, pixels)
        await self._acquire(pixels)
        loop = asyncio.get_running_loop()
        elapsed: float | None = None

        def decode() -> T:
            nonlocal elapsed
            started = time.perf_counter()
            try:
                return fn()
            finally:
                elapsed = time.perf_counter() - started
                if pixels >= TRIM_AFTER_PIXELS:  # its buffers are freed: hand them back
                    give_back_freed_memory()

        def release(_: Future[T]) -> None:
            """Runs once per job, even one cancelled before it started (which runs no `finally`)."""
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
                loop.call_soon_threadsafe(self._release, pixels, elapsed)

        try:
            job = self._executor.submit(decode)
        except BaseException:  # shut down: nothing will run to give the slot back
            self._release(pixels, None)
            raise
        # Released when the job is done, even if the request stopped waiting.
        job.add_done_callback(release)
        return await asyncio.wrap_future(job, loop=loop)

    async def _acquire(self, pixels: int) -> None:
        if not self._waiters and self._fits(pixels):
            self._take(pixels)
            return
        waiter = _Waiter(pixels, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._pixels_waiting += pixels
        try:
            await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self._release(pixels, None)  # granted just as the request gave up
            elif waiter.queued:  # else `_wake` met it cancelled and dropped it already
                waiter.queued = False
                self._waiters.remove(waiter)
                self._pixels_waiting -= pixels
                self._wake()
            raise

    def _trim_if_idle(self) -> None:
        if not self.busy:
            with contextlib.suppress(RuntimeError):  # the executor shut down meanwhile
                self._executor.submit(give_back_freed_memory)

    def _fits(self, pixels: int) -> bool:
        return (
            self._running < self.concurrency and self._pixels_running + pixels <= self.pixel_budget
        )

    def _take(self, pixels: int) -> None:
        self._running += 1
        self._pixels_running += pixels

    def _release(self, pixels: int, elapsed: float | None) -> None:
        self._running -= 1
        self._pixels_running -= pixels
        if pixels >= TRIM_AFTER_PIXELS and not self.busy:
            # The last uploads' requests free their bytes and buffers after answering: once they
            # are gone and no decode has started, trim once more, on a decode thread.
            asyncio.get_running_loop().call_later(IDLE_TRIM_DELAY_S, self._trim_if_idle)
        if elapsed is not None and pixels >= 4096:  # tiny images say more about overhead
            sample = elapsed / pixels
            self.seconds_per_pixel += EWMA_WEIGHT * (sample - self.seconds_per_pixel)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0].pixels):
            waiter = self._waiters.popleft()
            waiter.queued = False
            self._pixels_waiting -= waiter.pixels
            if waiter.future.done():  # cancelled meanwhile
                continue
            self._take(waiter.pixels)
            waiter.future.set_result(None)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Booking:
    """The estimated seconds of inference one request's work holds in its lane, given back as the
    inference thread finishes (or skips) its rows: never while the work still runs."""

    __slots__ = ("_ahead", "_booked", "_learn", "_started", "lane", "seconds")

    def __init__(
        self,
        booked: dict[str, float],
        lane: str,
        seconds: float,
        learn: Callable[[str, float, float], None] | None = None,
    ) -> None:
        self._booked = booked
        self.lane = lane
        self.seconds = seconds
        self._ahead = booked[lane] + seconds  # the work to be done before this job is
        self._learn = learn
        self._started = time.perf_counter()
        booked[lane] += seconds

    def finish(self) -> None:
        """The thread has run this job: how long it took, against the work booked ahead of it,
        goes to `learn`; then the booking is given back."""
        if self._learn is not None and self.seconds > 0:
            self._learn(self.lane, time.perf_counter() - self._started, self._ahead)
        self.close()

    def keep(self, seconds: float) -> None:
        """Keeps at most `seconds` booked (what the work left could still take)."""
        if seconds < self.seconds:
            left = self._booked[self.lane] - (self.seconds - seconds)
            self._booked[self.lane] = left if left > 1e-9 else 0.0  # no rounding residue
            self.seconds = max(0.0, seconds)

    def close(self) -> None:
        self.keep(0.0)


class InferenceGate:
    """Books inference work per lane (`app.inference.scheduler`) and refuses, with 503 at once,
    work that would wait too long: light work past `light_queue_s` of light work booked, heavy
    work that could not finish within `HEAVY_SHARE_OF_TIME_LEFT` of the request's time left."""

    def __init__(self, slice_s: float, light_queue_s: float, max_rows: int) -> None:
        self.slice_s = slice_s
        self.light_queue_s = light_queue_s
        self.max_rows = max_rows
        self.seconds_per_row: dict[str, float] = {}
        self.booked_s: dict[str, float] = {LIGHT: 0.0, HEAVY: 0.0}
        self.refused_share = 0.0  # of chosen digits' first candidates, by the guide
        self.typical_light_s = 0.0  # a light job's booking, on average (for `light_full`)
        self.typical_light_by_kind: dict[str, float] = {}  # the same per `REQUEST_KIND`
        # Seconds a job takes to get through its lane per second of work booked there, learned
        # from the jobs themselves: more than 1 where the event loop shares the inference
        # thread's core (its work on each request is not booked), where heavy slices wait for
        # light turns, or where the machine is busy with other work.
        self.stretch: dict[str, float] = {LIGHT: 1.0, HEAVY: 1.0}
        self.returns = ReturnBook()
        self.heavy_returns = ReturnBook()

    @property
    def pending_s(self) -> float:
        return self.booked_s[LIGHT] + self.booked_s[HEAVY]

    def cost(self, rows: int, *ops: str) -> float:
        """Estimated seconds for `rows` rows through each of `ops` in turn."""
        return rows * sum(self.seconds_per_row.get(op, PRIOR_INFERENCE_S_PER_ROW) for op in ops)

    def slice_rows(self, *ops: str) -> int:
        """Rows per forward pass (and per heavy slice): about `slice_s` of work, at most
        `max_rows`, at least one."""
        per_row = self.cost(1, *ops)
        return max(1, min(self.max_rows, int(self.slice_s / per_row)))

    def lane(self, rows: int, *ops: str) -> str:
        return LIGHT if rows <= self.slice_rows(*ops) else HEAVY

    def book(self, lane: str, seconds: float, time_left_s: float) -> Booking:
        """Books `seconds` of work in `lane`, or raises `Overloaded` (503) when it would wait
        too long; the first job in an empty lane is always admitted."""
        ahead = self.booked_s[lane]
        limit = self._limit(lane, time_left_s)
        if ahead > 0 and self._too_long(lane, ahead + seconds, limit):
            detail = f"the {lane} inference queue holds about {ahead:.2f} s of work, retry shortly"
            earliest = retry_after(self._wait_s(lane, ahead + seconds) - limit)
            if lane == LIGHT:
                raise self.light_refusal(detail, earliest)
            # spread at about the jobs of this size the lane finishes in a second, like light work
            job_s = seconds * self.stretch[HEAVY]
            raise Overloaded(detail, self.heavy_returns.come_back_after(earliest, job_s))
        if lane == LIGHT:
            self.typical_light_s = _ewma(self.typical_light_s, seconds)
            kind = REQUEST_KIND.get()
            if kind is not None:
                by_kind = self.typical_light_by_kind
                by_kind[kind] = _ewma(by_kind.get(kind, 0.0), seconds)
        return Booking(self.booked_s, lane, seconds, self._learn_stretch)

    @property
    def light_stretch(self) -> float:
        return self.stretch[LIGHT]

    def light_full(self, time_left_s: float, kind: str | None = None) -> bool:
        """Whether a light job of the usual size (of `kind`, once one has been booked) would be
        refused now, so a request can be refused from its head, before its body is read and
        parsed for nothing."""
        booked = self.booked_s[LIGHT]
        limit = self._limit(LIGHT, time_left_s)
        typical = self.typical_light_s
        if kind is not None:
            typical = self.typical_light_by_kind.get(kind, typical)
        return booked > 0 and self._too_long(LIGHT, booked + typical, limit)

    def light_refusal(
        self, detail: str = "the inference queue is full, retry shortly", earliest_s: int = 1
    ) -> Overloaded:
        """The 503 for light work, its `Retry-After` spread by `returns` over the seconds ahead
        at about the light jobs the thread gets through in a second."""
        job_s = self.typical_light_s * self.light_stretch
        return Overloaded(detail, self.returns.come_back_after(earliest_s, job_s))

    def _too_long(self, lane: str, booked_s: float, limit: float) -> bool:
        """Whether `booked_s` in `lane` (a new job's included) would wait past `limit`. The light
        lane always admits `LIGHT_PIPELINE_JOBS` typical jobs, so one is ready as the thread ends
        another: with a limit of one `/v2` [16, 32] job, the thread waited for the next one's
        body to be parsed after every job (goodput 0.79 of capacity)."""
        if lane == LIGHT and booked_s <= LIGHT_PIPELINE_JOBS * self.typical_light_s:
            return False
        return self._wait_s(lane, booked_s) > limit

    def _wait_s(self, lane: str, booked_s: float) -> float:
        """How long `booked_s` of work in `lane` takes to get through it, as far as learned."""
        return booked_s * self.stretch[lane]

    def _learn_stretch(self, lane: str, took_s: float, booked_ahead_s: float) -> None:
        """One job's time through its lane over the work booked ahead of it (its own included),
        into the lane's `stretch`; a nearly empty lane's fixed latencies say nothing."""
        if booked_ahead_s >= STRETCH_SAMPLE_MIN_S:
            sample = min(max(took_s / booked_ahead_s, 1.0), MAX_STRETCH)
            self.stretch[lane] += EWMA_WEIGHT * (sample - self.stretch[lane])

    def _limit(self, lane: str, time_left_s: float) -> float:
        """How much work `lane` may hold with a new job in it."""
        if lane == LIGHT:
            return min(self.light_queue_s, time_left_s - self.slice_s)
        return HEAVY_SHARE_OF_TIME_LEFT * time_left_s

    def learn(self, op: str, rows: int, seconds: float) -> None:
        """One measured run of `op` over `rows` rows, into its moving average."""
        spr = self.seconds_per_row.get(op, PRIOR_INFERENCE_S_PER_ROW)
        self.seconds_per_row[op] = spr + EWMA_WEIGHT * (seconds / max(1, rows) - spr)

    def calibrate(self, op: str, run: Callable[[], Any], rows: int) -> None:
        """Sets `op`'s cost from a timed run of `rows` rows (after a first one, to warm it), so
        admission starts from this machine's costs, not from a guess."""
        run()
        started = time.perf_counter()
        run()
        self.seconds_per_row[op] = (time.perf_counter() - started) / rows

    def learn_refused_share(self, share: float) -> None:
        """One guided request's share of refused first candidates, into its moving average."""
        self.refused_share += EWMA_WEIGHT * (share - self.refused_share)

    def timed(self, op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wraps a batch function (run on the inference thread) to learn its seconds per row."""
        self.seconds_per_row.setdefault(op, PRIOR_INFERENCE_S_PER_ROW)

        def run(key: Any, batch: Any) -> Any:
            started = time.perf_counter()
            out = fn(key, batch)
            self.learn(op, len(batch), time.perf_counter() - started)
            return out

        return run
