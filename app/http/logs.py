"""Structured logs: one JSON object per line on stderr, and the access log in the same shape.

Log collectors parse JSON without per-service rules, and every line written while a request runs
carries its request id, so an error body's `request_id` finds its traceback. Access lines skip
`logging` (a record, a lock and a flushed write per request, on the event loop): they are queued
and a writer thread writes them every `FLUSH_S`; `flush` also runs on every way out of the process.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import random
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from app.http.request_id import current_request_id

FLUSH_S = 0.05
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
access_logger = logging.getLogger("app.access")


def log_entry(created: float, level: str, logger: str, msg: str, **fields: Any) -> str:
    """The one JSON shape of every line: time, level, logger, message, request id, the rest."""
    entry = {
        "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "msg": msg,
    }
    request_id = fields.pop("request_id", None) or current_request_id()
    if request_id:
        entry["request_id"] = request_id
    entry.update(fields)
    try:  # orjson: a fifth of `json`'s time on the hot path's access line
        return orjson.dumps(entry, default=str).decode()
    except orjson.JSONEncodeError:  # what orjson does not write (an integer past 64 bits)
        return json.dumps(entry, default=str)


class JsonFormatter(logging.Formatter):
    """`log_entry` of a `LogRecord`, with any `extra=` fields and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _RESERVED}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        level, name = record.levelname.lower(), record.name
        return log_entry(record.created, level, name, record.getMessage(), **fields)


class AccessLog:
    """One line per request: queued on the event loop, written in batches by a daemon thread."""

    def __init__(self) -> None:
        self.sample = 1.0
        self._stream: TextIO | None = None
        self._lines: deque[str] = deque()
        self._thread: threading.Thread | None = None

    def configure(self, stream: TextIO | None, sample: float = 1.0) -> None:
        """Writes to `stream` from now on (None: through the `app.access` logger)."""
        self.flush()
        self._stream, self.sample = stream, sample
        if stream is not None and self._thread is None:
            self._thread = threading.Thread(target=self._write_loop, name="access-log", daemon=True)
            self._thread.start()
            atexit.register(self.flush)

    def record(
        self, method: str, path: str, status: int, route: str, ms: float, request_id: str | None
    ) -> None:
        """`VAE_ACCESS_LOG_SAMPLE` keeps that share of successes; errors are always written."""
        if not access_logger.isEnabledFor(logging.INFO):
            return
        if status < 400 and self.sample < 1.0 and random.random() >= self.sample:
            return
        message = f"{method} {path} {status}"
        fields = {"status": status, "route": route, "ms": ms}
        if self._stream is None:
            access_logger.info("%s", message, extra=fields)
            return
        line = log_entry(
            time.time(), "info", "app.access", message, request_id=request_id, **fields
        )
        self._lines.append(line)

    def flush(self) -> None:
        """Writes every queued line now."""
        stream, lines = self._stream, self._lines
        if stream is None or not lines:
            return
        batch = []
        while lines:
            batch.append(lines.popleft())
        try:
            stream.write("\n".join(batch) + "\n")
            stream.flush()
        except (OSError, ValueError):  # stderr closed at shutdown: nothing left to tell
            pass

    def _write_loop(self) -> None:
        while True:
            time.sleep(FLUSH_S)
            self.flush()


ACCESS_LOG = AccessLog()


def configure_logging(level: str = "info", access_log_sample: float = 1.0) -> None:
    """Routes the app's and uvicorn's loggers through one JSON handler on stderr.

    uvicorn's own access log is switched off: the request context writes one that knows the route
    template, the request id and the latency.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    ACCESS_LOG.configure(sys.stderr, access_log_sample)


def flush_logs() -> None:
    """Every way out of the process calls this first (`os._exit` skips `atexit`)."""
    ACCESS_LOG.flush()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed at shutdown
            stream.flush()
