"""A server in a subprocess on 127.0.0.1 and a free port: the one way the harness starts one.

It is started once it serves: the line its log writes once the port is bound, or, with `ready`,
a 200 from that path over HTTP; never a sleep-and-hope. When it exits first or does not come up
in time, `DidNotStart` says so with the last lines it logged. It stops with SIGTERM, then SIGKILL
after a grace period.
"""

from __future__ import annotations

import contextlib
import http.client
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from harness.processes import HOST, STOP_GRACE_S, cpu_seconds, free_port, memory_mb, stop

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 180  # loading and warming a model on a busy two-core machine
BOUND_LINE = "Uvicorn running on"  # uvicorn logs it once startup is done and the port is bound


class DidNotStart(RuntimeError):
    """A server exited during start-up, or did not serve within its time; the message ends with
    the last lines it logged."""


def answers_200(url: str, timeout_s: float = 2.0) -> bool:
    """One `GET url`: did it answer 200? (No answer at all is a no.)"""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        connection.request("GET", parts.path or "/")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def wait_until_answers(
    url: str, process: subprocess.Popen, timeout_s: float, log: Callable[[], str]
) -> None:
    """Polls `url` until it answers 200; raises `DidNotStart` with `log()` if the process exits
    first or `timeout_s` runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            command = shlex.join(map(str, process.args))
            raise DidNotStart(f"{command} exited with {process.returncode}:\n{log()}")
        if answers_200(url):
            return
        time.sleep(0.2)
    raise DidNotStart(f"{url} did not answer 200 within {timeout_s} s:\n{log()}")


class ServerProcess:
    """`command` in a subprocess, `{port}` in it replaced by a free loopback port; started when
    constructed (see the module), and a context manager that stops it.

    Its stderr is kept line by line in `log` (and copied to `log_file` if given). With `output`
    instead, the kernel writes its stdout and stderr straight into that file and nothing here
    reads them as they come (no reader competes with a server pinned to a core); `log` reads the
    file back, and `ready` is needed. `cpus` pins it (`taskset -c`); `own_session` starts it in a
    session of its own, so that `stop` reaches the processes it starts.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: Path = REPO,
        env: Mapping[str, str] | None = None,
        ready: str | None = None,
        port: int | None = None,
        stdout: int | None = None,
        log_file: Path | None = None,
        output: Path | None = None,
        cpus: str | None = None,
        own_session: bool = False,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.output = output
        self.stop_grace_s = stop_grace_s
        self.own_session = own_session
        self._lines: list[str] = []
        argv = [str(a).replace("{port}", str(self.port)) for a in command]
        pin = ["taskset", "-c", cpus] if cpus else []
        if output is not None and ready is None:
            raise ValueError("a server that logs into a file is started by `ready`")
        with contextlib.ExitStack() as files:
            streams: dict = {"stdout": stdout, "stderr": subprocess.PIPE}
            if output is not None:  # closed here once started: the child has its own copy
                sink = files.enter_context(output.open("w"))
                streams = {"stdout": sink, "stderr": subprocess.STDOUT}
            self.process = subprocess.Popen(
                [*pin, *argv],
                cwd=cwd,
                env=None if env is None else dict(env),
                text=True,
                start_new_session=own_session,
                **streams,
            )
        self._bound = False
        self._settled = threading.Event()  # bound, or its log ended
        if output is None:
            threading.Thread(target=self._watch, args=(log_file,), daemon=True).start()
        try:
            self._wait_until_started(startup_timeout_s, ready)
        except BaseException:
            self.stop()
            raise

    @property
    def log(self) -> list[str]:
        """What it has logged so far, line by line."""
        if self.output is not None:
            return self.output.read_text(errors="replace").splitlines(keepends=True)
        return self._lines

    @property
    def host_port(self) -> str:
        """`127.0.0.1:port`, for clients and scrapers that take no scheme."""
        return f"{HOST}:{self.port}"

    def _watch(self, log_file: Path | None) -> None:
        sink: IO[str] | None = log_file.open("w", buffering=1) if log_file else None
        assert self.process.stderr is not None
        try:
            for line in self.process.stderr:
                self._lines.append(line)
                if sink:
                    sink.write(line)
                if BOUND_LINE in line:
                    self._bound = True
                    self._settled.set()
        finally:
            if sink:
                sink.close()
            self._settled.set()

    def tail(self, lines: int = 30) -> str:
        return "".join(self.log[-lines:])

    def _wait_until_started(self, timeout_s: float, ready: str | None) -> None:
        if ready is not None:
            wait_until_answers(self.url + ready, self.process, timeout_s, self.tail)
            return
        command = shlex.join(map(str, self.process.args))
        if not self._settled.wait(timeout_s):
            raise DidNotStart(f"{command} did not bind in {timeout_s} s:\n{self.tail()}")
        if not self._bound:
            code = self.process.wait(timeout=STOP_GRACE_S)
            raise DidNotStart(f"{command} exited with {code} during start-up:\n{self.tail()}")

    def memory_mb(self, key: str = "VmRSS") -> float:
        """`VmRSS` (now) or `VmHWM` (its peak) of the server process."""
        return memory_mb(self.process.pid, key)

    def cpu_s(self) -> float:
        """CPU seconds the server process has used so far."""
        return cpu_seconds(self.process.pid)

    def loop_cpu_s(self) -> float:
        """CPU seconds of the server's main thread so far: the event loop's, for telling its
        cost from the inference thread's."""
        return cpu_seconds(self.process.pid, thread=self.process.pid)

    def stop(self) -> None:
        stop(self.process, self.stop_grace_s, group=self.own_session)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
