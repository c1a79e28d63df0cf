"""The service's life after start-up: serving, then draining on SIGTERM, then gone.

`Lifecycle` is the app's own flag, which `app.main` hands to the server
(`app.server.shutdown.DrainingServer`) to set when the signal arrives. While it drains, `/readyz`
answers 503 so load balancers stop sending traffic, new work gets 503 with `Retry-After` and
`Connection: close`, and requests already running finish.
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
