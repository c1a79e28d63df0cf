"""What the harness reads and does to a process it started: a free port to give it, its memory
and CPU time from /proc, and the ways to stop it.

Linux only (/proc), like everything that starts a server here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

HOST = "127.0.0.1"
STOP_GRACE_S = 30


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def memory_mb(pid: int, key: str = "VmRSS") -> float:
    """A memory figure of a process from /proc: `VmRSS` now, `VmHWM` its peak."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User plus system CPU seconds of a process so far, all its threads (or only `thread`, by
    its id; the main thread's is the pid): steadier than requests per second when other load
    shares the machine."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from each process's parent pid (Ray's workers start
    sessions of their own, so a process group does not hold them all)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(process: subprocess.Popen, grace_s: float = STOP_GRACE_S, *, group: bool = False) -> None:
    """SIGTERM, and SIGKILL if it is still running after `grace_s` (a no-op once it exited).
    With `group`, both go to its process group (it was started in a session of its own), which
    may outlive its leader."""
    if process.poll() is not None and not group:
        return
    send = (lambda sig: os.killpg(process.pid, sig)) if group else process.send_signal
    with contextlib.suppress(ProcessLookupError):
        send(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            send(signal.SIGKILL)
        process.wait()


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL to a process and everything below it at once: what a machine that dies does."""
    for pid in [process.pid, *descendants(process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)
