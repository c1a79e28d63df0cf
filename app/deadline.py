"""The request deadline: set once when a request's work begins, read by whatever may wait.

`VAE_REQUEST_TIMEOUT_S` counts from the moment the body has arrived (a slow upload is the edge's
business). The guard (`app.http.guard`) enforces it with one `asyncio.timeout` around the request;
admission control reads the time left to refuse work that could not finish (503 up front, rather
than a 504 at the end).
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

from starlette.types import Scope

SCOPE_KEY = "vae.deadline"  # the guard's `asyncio.Timeout`, rescheduled by `start`
REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("request_deadline", default=None)


def start(scope: Scope, timeout_s: float) -> None:
    """Starts this request's clock: `timeout_s` from now, for the guard and for admission."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    REQUEST_DEADLINE.set(deadline)
    guard_timeout = scope.get(SCOPE_KEY)
    if guard_timeout is not None:
        guard_timeout.reschedule(deadline)


def time_left_s(default: float) -> float:
    """Seconds until this request's deadline, or `default` outside a request with one."""
    deadline = REQUEST_DEADLINE.get()
    if deadline is None:
        return default
    return deadline - asyncio.get_running_loop().time()


def timeout_detail(timeout_s: float) -> str:
    return f"request took longer than {timeout_s:g} s (VAE_REQUEST_TIMEOUT_S)"
