"""The service's life after start-up: serving, then draining on SIGTERM, then gone.

`Lifecycle` is the app's own flag, set by `app.server.shutdown.DrainingServer` when the signal
arrives. While it drains, `/readyz` answers 503 so load balancers stop sending traffic, new work
gets 503 with `Retry-After` and `Connection: close`, and requests already running finish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Lifecycle:
    draining_since: float | None = None

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    def begin_drain(self) -> None:
        if self.draining_since is None:
            self.draining_since = time.monotonic()


def find_lifecycle(asgi_app: object) -> Lifecycle | None:
    """The `Lifecycle` of the FastAPI app inside uvicorn's middleware wrappers, if any."""
    for _ in range(16):
        state = getattr(asgi_app, "state", None)
        lifecycle = getattr(state, "lifecycle", None)
        if isinstance(lifecycle, Lifecycle):
            return lifecycle
        asgi_app = getattr(asgi_app, "app", None)
        if asgi_app is None:
            return None
    return None
