"""The id of the request being served: taken from `X-Request-ID` when sane, else a fresh one.

A context variable, so a log line or an error body written anywhere below the middleware (routes,
error handlers, the engine) names the request without passing it around.
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar

from starlette.types import Scope

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def current_request_id() -> str | None:
    """The id of the request this code runs for; None outside a request."""
    return REQUEST_ID.get()


def request_id_for(scope: Scope) -> str:
    """The caller's `X-Request-ID` if it is short and plain (it goes into logs), else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE_ID.match(text):
                return text
            break
    # 32 hex digits. An id must be unique, not unpredictable: no system call for it.
    return f"{random.getrandbits(128):032x}"
