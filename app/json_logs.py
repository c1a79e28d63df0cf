"""Structured logs: one JSON object per line on stderr, for the app's and uvicorn's loggers.

Log collectors parse JSON without per-service rules, and every line written while a request runs
carries its request id, so an error body's `request_id` finds its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from app.access_log import ACCESS_LOG
from app.request_id import current_request_id

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Time, level, logger, message, request id and any `extra=` fields, as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", access_log_sample: float = 1.0) -> None:
    """Routes the app's and uvicorn's loggers through one JSON handler on stderr.

    uvicorn's own access log is switched off: `RequestContextMiddleware` writes one that knows
    the route template, the request id and the latency, through `app.access_log` (same stream,
    same JSON shape, built without `logging`'s per-record cost).
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
