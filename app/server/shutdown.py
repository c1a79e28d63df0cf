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

Each process builds its own app with `app.main.build_service`, which hands over the lifecycle flag
and the overload check; the edge's limits come from the same settings (`WorkerService`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from app.config import Settings
from app.http.lifecycle import Lifecycle
from app.http.logs import flush_logs
from app.main import Service, build_service
from app.server.edge import EdgeLimits, GuardedHttpToolsProtocol

log = logging.getLogger("app.shutdown")


def reserve_s(grace_s: float) -> float:
    """Time kept for each of the last two steps (cancelling, then exiting)."""
    return min(2.0, grace_s / 4)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain phase and a hard deadline after the first signal."""

    def __init__(self, config: uvicorn.Config, grace_s: float, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self.lifecycle = lifecycle
        self._signalled_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled_at is not None:  # a second signal: stop waiting for requests
            self.should_exit = True
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        self._signalled_at = time.monotonic()
        log.info("signal %d: draining, exiting within %g s", sig, self.grace_s)
        self.lifecycle.begin_drain()
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
    """Serves the app behind the edge; returns after a (bounded) shutdown."""
    worker = WorkerService(settings)
    config = uvicorn.Config(
        worker.app,
        factory=True,
        http=worker.protocol,
        host=host,
        port=port,
        workers=workers,
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
    assert worker.service is not None
    server = DrainingServer(config, settings.shutdown_grace_s, worker.service.lifecycle)
    server.run()
    if server._signalled_at is not None:
        # Served and shut down: skip the interpreter's own teardown (torch, ONNX Runtime and
        # thread pools took 2 to 6 s of it on a busy machine), which the deadline cannot bound.
        flush_logs()
        os._exit(0)


@dataclass
class WorkerService:
    """One server process's app and edge, built in that process from the settings.

    uvicorn calls `app` (the app factory) once when it loads, then `protocol` for each
    connection. It is picklable until then, so that uvicorn's supervisor can hand it to each
    worker of `--workers N`, which then builds its own app and edge.
    """

    settings: Settings
    service: Service | None = field(default=None, init=False)
    edge: type[GuardedHttpToolsProtocol] | None = field(default=None, init=False)

    def app(self) -> FastAPI:
        self.service = build_service(self.settings, behind_edge=True)
        limits = EdgeLimits.from_settings(self.settings)
        self.edge = GuardedHttpToolsProtocol.configured(limits, self.service.overload_check)
        return self.service.app

    def protocol(self, **kwargs: Any) -> GuardedHttpToolsProtocol:
        assert self.edge is not None, "uvicorn loads the app before it accepts a connection"
        return self.edge(**kwargs)
