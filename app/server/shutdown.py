"""Runs uvicorn with the guarded HTTP edge and a shutdown that always ends within a deadline.

uvicorn on its own closes the listener at SIGTERM (so `/readyz` never answers 503) and, without
`timeout_graceful_shutdown`, waits forever for a client that stopped half-way through an upload.
`DrainingServer` instead, on the first SIGTERM or SIGINT:

1. marks the app as draining (`app.http.lifecycle`): `/readyz` answers 503 at once, new work
   gets 503;
2. keeps the listener open while requests already running finish, but no longer than
   `grace - 2 * reserve`;
3. then lets uvicorn shut down, cancelling whatever still runs after `reserve` more seconds
   (those requests get 503);
4. exits without the interpreter's slow teardown, and a watchdog ends the process at `grace`
   seconds whatever happens (a decode stuck in C, a thread that never returns).

A second signal skips the waiting. With `--workers N`, uvicorn's supervisor sends each worker a
SIGTERM; each worker then shuts down within the same deadline (without the drain phase).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType

import uvicorn
from uvicorn.supervisors import Multiprocess

from app.config import Settings
from app.http.lifecycle import Lifecycle, find_lifecycle
from app.http.logs import flush_logs

log = logging.getLogger("app.shutdown")

PROTOCOL = "app.server.edge:GuardedHttpToolsProtocol"


def reserve_s(grace_s: float) -> float:
    """Time kept for each of the last two steps (cancelling, then exiting)."""
    return min(2.0, grace_s / 4)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain phase and a hard deadline after the first signal."""

    def __init__(self, config: uvicorn.Config, grace_s: float) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self._lifecycle: Lifecycle | None = None
        self._signalled_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled_at is not None:  # a second signal: stop waiting for requests
            self.should_exit = True
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        self._signalled_at = time.monotonic()
        log.info("signal %d: draining, exiting within %g s", sig, self.grace_s)
        self._lifecycle = find_lifecycle(self.config.loaded_app)
        if self._lifecycle is not None:
            self._lifecycle.begin_drain()
        else:
            self.should_exit = True
        threading.Thread(target=self._watchdog, name="shutdown-watchdog", daemon=True).start()

    async def on_tick(self, counter: int) -> bool:
        started = self._signalled_at
        if started is not None and not self.should_exit:
            elapsed = time.monotonic() - started
            if not self.server_state.tasks or elapsed >= self.grace_s - 2 * reserve_s(self.grace_s):
                self.should_exit = True
        if self.should_exit and started is not None:
            left = self.grace_s - (time.monotonic() - started)
            reserve = reserve_s(self.grace_s)
            self.config.timeout_graceful_shutdown = max(0.1, left - reserve)  # type: ignore[assignment]
        return await super().on_tick(counter)

    def _watchdog(self) -> None:
        assert self._signalled_at is not None
        time.sleep(max(0.0, self.grace_s - 0.1 - (time.monotonic() - self._signalled_at)))
        log.error("still running %g s after the signal: exiting now", self.grace_s)
        flush_logs()
        os._exit(1)


def serve(settings: Settings, host: str, port: int, workers: int = 1) -> None:
    """Serves `app.main:app` with the edge limits; returns after a (bounded) shutdown."""
    config = uvicorn.Config(
        "app.main:app",
        host=host,
        port=port,
        workers=workers,
        http=PROTOCOL,
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=True,
        server_header=False,  # no advertising the server's make and version to every client
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s - 2)),
    )
    if workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    config.load()
    server = DrainingServer(config, settings.shutdown_grace_s)
    server.run()
    if server._signalled_at is not None:
        # Served and shut down: skip the interpreter's own teardown (torch, ONNX Runtime and
        # thread pools took 2 to 6 s of it on a busy machine), which the deadline cannot bound.
        flush_logs()
        os._exit(0)
