"""`TracedMicroBatcher`: the `MicroBatcher` with spans, used instead of it when tracing is on.

A batch serves several requests, each in its own trace, so the batch cannot be a child of all of
them. Each request gets a `batch.queue` span for its wait; the batch gets one `batch.forward` span,
a child of the first request it serves and LINKED to every request it served; and each queue span
links to the forward pass that ended its wait, so every request's trace leads to its batch.
Requests that are not sampled get no spans here, and a batch of only those none.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, StatusCode

from app import tracing
from app.inference.batching import K, MicroBatcher, Output, _Job

OPERATION = "vae.operation"  # encode, decode or reconstruct
BATCH_ROWS = "vae.batch.size"  # rows in the forward pass
BATCH_REQUESTS = "vae.batch.requests"  # jobs (requests, or parts of a split one) it served


class _NotingQueue(asyncio.Queue):
    """An `asyncio.Queue` that calls `on_put(job)` for each job put in it: `put_nowait` runs in
    the submitting request's context, where its span is the current one."""

    def __init__(self, maxsize: int, on_put: Any) -> None:
        super().__init__(maxsize)
        self._on_put = on_put

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)
        self._on_put(item)


class TracedMicroBatcher(MicroBatcher[K]):
    """`MicroBatcher` plus the queue and forward-pass spans (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tracer = tracing.tracer()
        # A queued job's open `batch.queue` span and the span context of the request it serves.
        self._waiting: dict[_Job[K], tuple[Span, SpanContext]] = {}
        super().__init__(*args, **kwargs)

    def _new_queue(self, maxsize: int) -> asyncio.Queue[_Job[K]]:
        return _NotingQueue(maxsize, self._queued)

    def _queued(self, job: _Job[K]) -> None:
        request_span = trace.get_current_span()
        if not request_span.is_recording():  # sampled out: no spans (see `tracing.traced`)
            return
        request = request_span.get_span_context()
        span = self._tracer.start_span(
            "batch.queue", attributes={OPERATION: self.name, BATCH_ROWS: job.size}
        )
        self._waiting[job] = (span, request)
        job.future.add_done_callback(lambda _: self._left_unserved(job))

    def _left_unserved(self, job: _Job[K]) -> None:
        """Ends the queue span of a job that never reached a batch (timed out, shut down)."""
        waiting = self._waiting.pop(job, None)
        if waiting is not None:
            waiting[0].set_status(StatusCode.ERROR, "left the queue before its batch ran")
            waiting[0].end()

    async def _execute(self, jobs: list[_Job[K]]) -> None:
        waits = [self._waiting.pop(job) for job in jobs if job in self._waiting]
        if not waits:  # every request it serves was sampled out
            await super()._execute(jobs)
            return
        # The batch is a child of the first (sampled) request it serves.
        opener = trace.set_span_in_context(NonRecordingSpan(waits[0][1]))
        with self._tracer.start_as_current_span(
            "batch.forward",
            context=opener,
            links=[Link(request) for _, request in waits],
            attributes={
                OPERATION: self.name,
                BATCH_ROWS: sum(job.size for job in jobs),
                BATCH_REQUESTS: len(jobs),
            },
        ) as batch:
            forward = batch.get_span_context()
            for queue_span, _ in waits:
                queue_span.add_link(forward)
                queue_span.end()
            await super()._execute(jobs)

    def _run_now(self, key: K, rows: np.ndarray) -> Output:
        """A lone row run at once (no queue, so no queue span): its forward pass, a child of the
        request and linked to it like any batch."""
        request_span = trace.get_current_span()
        if not request_span.is_recording():
            return super()._run_now(key, rows)
        request = request_span.get_span_context()
        with self._tracer.start_as_current_span(
            "batch.forward",
            links=[Link(request)],
            attributes={OPERATION: self.name, BATCH_ROWS: 1, BATCH_REQUESTS: 1},
        ):
            return super()._run_now(key, rows)
