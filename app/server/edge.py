"""The HTTP edge: bounds what one client can cost before a request reaches the app.

uvicorn's default parser (httptools) has no cap on header size, no timeout for a request that is
sent slowly and no cap on open connections. `GuardedHttpToolsProtocol` keeps httptools and adds
those limits by extending uvicorn's protocol (each override calls uvicorn's own method):

- request line plus headers over `max_header_bytes`, more than `max_headers` fields: 431
  (a URL past the parser's 65,535 bytes: 414);
- a request head not complete `header_timeout_s` after connect (or after its first byte): 408,
  or a silent close when nothing was sent at all;
- a request body that sends nothing for `body_timeout_s`: 408, and the app sees a disconnect;
- more than `max_connections` open connections: a connection with no request in progress is
  closed to make room (the oldest of the address holding the most such connections), so a flood
  of half-open connections from one address cannot lock out the others; only when every open
  connection is busy with a request does the new one get 503 with `Retry-After`;
- more than `max_connections_per_address` from one client address (0: no such limit): the same,
  within that address;
- idle keep-alive connections close after `keep_alive_s` (uvicorn's own timer), counted from the
  end of the `Retry-After` a refused connection was given;
- a client that closes its connection before its answer began has its request's task cancelled
  (`app.http.context.CLIENT_GONE_KEY`, logged as 499): a queued decode or inference job stops;
- a request the app's overload check (`app.http.shedding`) refuses from its head, or that asks
  again on the same connection before the `Retry-After` it was given: 503 with `Retry-After`
  written here (after a pause of up to `RETRY_PAUSE_S` for the second kind, or the whole
  `Retry-After` for a body over `LARGE_BODY_BYTES`, left unread meanwhile), its body skipped, the
  connection kept alive, no task started: under a flood of clients that send again at once, that
  is what keeps refusals cheap.

The body's size is checked once, in the app (`app/http/body_limit.py`). uvicorn's protocol is not a
public API: `pyproject.toml` pins uvicorn's minor version and `tests/api/test_http_edge.py` checks
the internals used here. Every refusal is a JSON body `{"detail": ...}` with `Connection: close`
(`{"error": ...}` for a `/v2` URL, the Open Inference Protocol's shape).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.config import MAX_URL_BYTES, Settings
from app.errors import Overloaded
from app.http import shedding
from app.http.body_limit import content_length
from app.http.context import CLIENT_GONE_KEY, REQUEST_TASK_KEY
from app.http.error_bodies import error_body

log = logging.getLogger("app.edge")
RETRY_PAUSE_S = 1.0  # the longest a refusal waits for a client that ignored its Retry-After
# A request this close to its Retry-After is on time: the pause above ends by a timer (uvloop's
# count milliseconds, and may fire that early), and the client's own clock is no better.
ON_TIME_S = 0.01
# A body larger than this, sent again before its Retry-After, waits all of it, unread: skipping
# megabytes of upload four times a second per client would cost the loop what admitted work needs.
LARGE_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    max_connections_per_address: int = 0

    @classmethod
    def from_settings(cls, s: Settings) -> EdgeLimits:
        return cls(
            max_header_bytes=s.max_header_bytes,
            max_headers=s.max_headers,
            header_timeout_s=s.header_timeout_s,
            body_timeout_s=s.body_timeout_s,
            max_connections=s.max_connections,
            max_connections_per_address=s.max_connections_per_address,
        )


class _Refused(Exception):
    """Raised inside a parser callback; httptools re-raises it as a parser error."""


class WaitingConnections:
    """The connections with no request in progress (never sent one, or idle between two), by
    client address, each address's oldest first: the ones to close when the cap is reached.

    The victim comes from the address that holds the most of them, so one client's flood of
    half-open connections sheds its own connections, not a newcomer's from another address.
    """

    def __init__(self) -> None:
        self.by_address: dict[str, dict[GuardedHttpToolsProtocol, None]] = {}

    def add(self, address: str, connection: GuardedHttpToolsProtocol) -> None:
        self.by_address.setdefault(address, {})[connection] = None

    def discard(self, address: str, connection: GuardedHttpToolsProtocol) -> None:
        connections = self.by_address.get(address)
        if connections is not None:
            connections.pop(connection, None)
            if not connections:
                del self.by_address[address]

    def victim(self, address: str | None = None) -> GuardedHttpToolsProtocol | None:
        """The oldest waiting connection of `address`, or (None) of the address with the most of
        them; None when there is none."""
        if address is not None:
            connections = self.by_address.get(address)
            return next(iter(connections)) if connections else None
        if not self.by_address:
            return None
        return next(iter(max(self.by_address.values(), key=len)))


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header, time and connection limits (see module doc).

    uvicorn builds one per connection from a class, so a server's limits, overload check and
    connection books are that class's: `configured` makes it."""

    limits: ClassVar[EdgeLimits]
    overload_check: ClassVar[shedding.Check | None]
    waiting: ClassVar[WaitingConnections]
    open_by_address: ClassVar[dict[str, int]]
    shed: ClassVar[int]  # connections closed to make room, logged once a second at most
    _shed_logged_at: ClassVar[float]

    @classmethod
    def configured(
        cls, limits: EdgeLimits, overload_check: shedding.Check | None
    ) -> type[GuardedHttpToolsProtocol]:
        """The protocol class for one server: these limits and this overload check (the app's,
        `app.main.Service`), with connection books of its own."""
        check = staticmethod(overload_check) if overload_check is not None else None
        books = {"waiting": WaitingConnections(), "open_by_address": {}, "shed": 0}
        return type(
            cls.__name__,
            (cls,),
            {"limits": limits, "overload_check": check, **books, "_shed_logged_at": 0.0},
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = self.limits
        self._reading_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_bytes = 0
        self._body_bytes_seen = 0
        self._refusal: tuple[int, str] | None = None
        self._refused = False
        self._shedding = False  # this request was refused from its head: skip its body
        self._told_to_wait: dict[str, float] = {}  # path -> until when it was refused (503)
        self._shed_read = self._shed_sent = False
        self._shed_timer: asyncio.TimerHandle | None = None
        self._address = ""
        self.url = b""

    # Connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._address = self.client[0] if self.client else ""
        opened = self.open_by_address.get(self._address, 0) + 1
        self.open_by_address[self._address] = opened
        per_address = self._limits.max_connections_per_address
        if per_address and opened > per_address and not self._make_room(self._address):
            log.warning(
                "refused a connection: %d open from %s, all busy", opened - 1, self._address
            )
            self._refuse(503, "too many open connections from your address", retry_after=1)
            return
        if len(self.connections) > self._limits.max_connections and not self._make_room():
            log.warning("refused a connection: %d open, all busy", len(self.connections) - 1)
            self._refuse(503, "too many open connections, retry shortly", retry_after=1)
            return
        self.waiting.add(self._address, self)
        self._head_timer = self.loop.call_later(self._limits.header_timeout_s, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        cycle = self.cycle
        if cycle is not None and not cycle.response_started and not self._refused:
            # Its client is gone before an answer began: stop the work (`CLIENT_GONE_KEY`).
            scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
            task = scope.get(REQUEST_TASK_KEY)
            if task is not None:
                scope[CLIENT_GONE_KEY] = True
                task.cancel()
        self.waiting.discard(self._address, self)
        left = self.open_by_address.get(self._address, 1) - 1
        if left > 0:
            self.open_by_address[self._address] = left
        else:
            self.open_by_address.pop(self._address, None)
        super().connection_lost(exc)

    def _make_room(self, address: str | None = None) -> bool:
        """Closes one connection that has no request in progress (of `address`, or of the address
        with the most); False when there is none."""
        victim = self.waiting.victim(address)
        if victim is None:
            return False
        victim._shed()
        cls = type(self)
        cls.shed += 1
        now = time.monotonic()
        if now - cls._shed_logged_at >= 1.0:
            cls._shed_logged_at = now
            cap = "per-address " if address is not None else ""
            limit = (
                self._limits.max_connections_per_address
                if address is not None
                else self._limits.max_connections
            )
            log.warning(
                "at the %sconnection cap (%d): closed %d connection(s) with no request in "
                "progress so far, the latest from %s",
                cap,
                limit,
                cls.shed,
                victim._address or "an unknown address",
            )
        return True

    def _shed(self) -> None:
        self.waiting.discard(self._address, self)
        self._refused = True
        self._cancel_timers()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)  # a limit hit in a parser callback ends in send_400_response
        if self._refused:
            return
        if self._reading_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_header_bytes:
                self._refuse(431, self._head_too_large())
            elif self._head_timer is None:  # the next request on a keep-alive connection
                self._head_timer = self.loop.call_later(
                    self._limits.header_timeout_s, self._head_timeout
                )
        elif self.cycle is not None and self.cycle.more_body and self._body_timer is None:
            self._body_bytes_seen = self._body_bytes
            self._body_timer = self.loop.call_later(self._limits.body_timeout_s, self._body_watch)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: idle connections close, busy ones after their answer."""
        self._cancel_timers()
        super().shutdown()

    # Parser callbacks

    def on_message_begin(self) -> None:
        # A request is in progress, so the connection is not idle. A refusal's answer can arm
        # uvicorn's keep-alive timer inside this same read, and that timer would otherwise close
        # the connection while this request waits out its pause.
        self._unset_keepalive_if_required()
        super().on_message_begin()
        self._reading_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_URL_BYTES:
            self._refusal = (414, f"URL longer than {MAX_URL_BYTES} bytes")
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._limits.max_headers:
            self._refusal = (431, f"more than {self._limits.max_headers} header fields")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self.waiting.discard(self._address, self)  # a request in progress: never shed
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._refuse_overloaded():
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if not self._shedding:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._shedding:  # refused from its head: done once its answer is sent too
            self._shed_read = True
            self._end_shed()
            return
        super().on_message_complete()

    def _refuse_overloaded(self) -> bool:
        """Answers 503 from the head when the app's overload check says so (only with no other
        request of this connection in progress, so answers stay in order). A connection that asks
        again for a path before the `Retry-After` it was given gets its 503 after a pause of up
        to `RETRY_PAUSE_S` (all of it with a large body): a client that retries in a tight loop
        cannot starve admitted work."""
        check = self.overload_check
        if check is None or self.pipeline or (self.cycle and not self.cycle.response_complete):
            return False
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        pause = 0.0
        now = time.monotonic()
        until = self._told_to_wait.get(path)
        if until is not None and (left := until - now) > ON_TIME_S:
            # the time it was told stands: asking early neither shortens nor extends it
            overloaded = Overloaded("asked again before Retry-After", retry_after=math.ceil(left))
            pause = left if self._body_is_large() else min(left, RETRY_PAUSE_S)
        else:
            method = self.parser.get_method().decode("ascii")
            overloaded = check(method, path, self.scope["headers"])
            until = now + overloaded.retry_after if overloaded is not None else None
        if overloaded is None:
            return False
        shedding.REFUSED_FROM_HEAD.inc()
        self._told_to_wait[path] = until
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        reply = _error_bytes(
            path,
            503,
            overloaded.detail,
            self.server_state.default_headers,
            overloaded.retry_after,
            keep_alive=keep_alive,
        )
        self._shedding, self._shed_read, self._shed_sent = True, False, False
        if pause > 0:
            self.flow.pause_reading()  # the rest of its body stays in the kernel until then
            self._shed_timer = self.loop.call_later(pause, self._send_shed, reply, keep_alive)
        else:
            self._send_shed(reply, keep_alive)
        return True

    def _body_is_large(self) -> bool:
        length = content_length(self.scope)
        return length is not None and length > LARGE_BODY_BYTES

    def _send_shed(self, reply: bytes, keep_alive: bool) -> None:
        self._shed_timer = None
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        self.transport.write(reply)
        if not keep_alive:
            self._refused = True
            self.transport.close()
            return
        self._shed_sent = True
        self._end_shed()

    def _end_shed(self) -> None:
        """Once the refused request is read and its answer sent, the connection waits again."""
        if self._shedding and self._shed_read and self._shed_sent:
            self._shedding = False
            self.on_response_complete()

    def on_response_complete(self) -> None:
        """Answered: with nothing pipelined behind it, the connection waits for a request again."""
        cycle = self.cycle
        wait = cycle.scope.pop(shedding.RETRY_AFTER_KEY, None) if cycle is not None else None
        if wait:  # refused by the app: the same path on this connection waits that long
            self._told_to_wait[cycle.scope["path"]] = time.monotonic() + wait
        idle = not self.pipeline
        super().on_response_complete()
        if idle and not self.transport.is_closing():
            self.waiting.add(self._address, self)
            if self._told_to_wait:
                self._keep_open_until_told()

    def _keep_open_until_told(self) -> None:
        """A client told to come back in N seconds finds its connection still open then: the
        keep-alive timeout counts from the end of its `Retry-After`, not from the refusal (a
        client that waited 5 s raced a 5 s keep-alive's close, and lost the request it sent)."""
        left = max(self._told_to_wait.values()) - time.monotonic()
        if left > 0 and self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = self.loop.call_later(
                left + self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    # Timers

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._reading_head or self.transport.is_closing():
            return
        if self._head_bytes == 0 and not self.url:  # connected and said nothing: just close
            self.waiting.discard(self._address, self)
            self.transport.close()
            return
        self._refuse(408, f"request head not complete within {self._limits.header_timeout_s:g} s")

    def _body_watch(self) -> None:
        """Runs every `body_timeout_s` while a body is arriving: cheaper than a timer per read."""
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        if self._body_bytes != self._body_bytes_seen or self.flow.read_paused:
            # progress, or we stopped reading because the app has not taken the body yet
            self._body_bytes_seen = self._body_bytes
            self._body_timer = self.loop.call_later(self._limits.body_timeout_s, self._body_watch)
            return
        self._refuse(408, f"request body stalled for {self._limits.body_timeout_s:g} s")

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._shed_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._shed_timer = None

    # Refusals

    def _head_too_large(self) -> str:
        if len(self.url) > MAX_URL_BYTES:
            return f"URL longer than {MAX_URL_BYTES} bytes"
        return f"request line and headers over {self._limits.max_header_bytes} bytes"

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error: a limit a callback hit, or a malformed request;
        uvicorn's own 400 is plain text, every error here is JSON."""
        status, detail = self._refusal or (400, "invalid HTTP request")
        self._refuse(status, detail)

    def _refuse(self, status: int, detail: str, retry_after: int | None = None) -> None:
        """Answers with a JSON error (unless a response already started) and closes."""
        self._refused = True
        self._cancel_timers()
        self.waiting.discard(self._address, self)  # on its way out: no room to make here
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app is waiting on this request: it sees a disconnect and stops.
            started = cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
            if started:
                self.transport.close()
                return
        if status != 503:
            log.info("refused a request: %d %s", status, detail)
        headers = self.server_state.default_headers
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        self.transport.write(_error_bytes(path, status, detail, headers, retry_after))
        self.transport.close()


def _error_bytes(
    path: str,
    status: int,
    detail: str,
    default_headers: list[tuple[bytes, bytes]],
    retry_after: int | None,
    keep_alive: bool = False,
) -> bytes:
    body = json.dumps(error_body(path, status, detail)).encode()
    head = [STATUS_LINE[status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    if retry_after is not None:
        head.append(b"retry-after: %d\r\n" % retry_after)
    head += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"\r\n" if keep_alive else b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(head)
