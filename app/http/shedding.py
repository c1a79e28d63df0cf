"""The overload check the HTTP edge runs on a request's head, before a task or a body exists.

Under a flood of clients that send again the moment they are refused, each refusal must cost
next to nothing, or refusing starves the admitted work of the event loop. The app that owns the
queues builds its check (`app.routes.shedding.shedder`) and `app.main` hands it to the guard and
to the server, which gives it to the edge (`app.server.edge`): the edge answers 503 straight from
the protocol when it says so, and, until its `Retry-After` has passed, to a connection that asks
again for what it was just refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from prometheus_client import Counter

from app.errors import Overloaded

REFUSED_FROM_HEAD = Counter(
    "vae_requests_refused_from_head_total",
    "Requests answered 503 by the edge from their head (overload), before the app saw them",
)

# Set in a request's scope by the guard when it answers 503 with `Retry-After` (seconds): the edge
# then refuses that path on that connection from the head until then.
RETRY_AFTER_KEY = "vae.retry_after"

# (method, path, headers) -> the refusal, or None to go on
Check = Callable[[str, str, list[tuple[bytes, bytes]]], Overloaded | None]


class Reservation(Protocol):
    """Work a request holds from its head until it ends (`release` may be called more than once)."""

    def release(self) -> None: ...


# (method, path, headers) -> what an admitted request holds while its body arrives, or None. The
# guard keeps it in the request's scope under `RESERVATION_KEY` and releases it when it ends.
Reserve = Callable[[str, str, list[tuple[bytes, bytes]]], Reservation | None]
RESERVATION_KEY = "vae.reservation"
