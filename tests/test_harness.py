"""The harness that starts servers for the tests, benchmarks and scripts (harness/server.py), on
stand-ins that start in milliseconds: Python's own http.server and one-line scripts."""

from __future__ import annotations

import sys
import time

import pytest

from harness.server import DidNotStart, ServerProcess, answers_200

HTTP_SERVER = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{port}"]


def test_a_server_is_started_once_its_ready_path_answers_and_stopped_on_the_way_out(tmp_path):
    (tmp_path / "ready").write_text("yes")
    with ServerProcess(
        HTTP_SERVER, cwd=tmp_path, ready="/ready", output=tmp_path / "server.log"
    ) as server:
        assert answers_200(f"{server.url}/ready")
        assert server.memory_mb("VmRSS") > 1
    assert server.process.returncode is not None
    assert any("GET /ready" in line for line in server.log)  # read back from the file


def test_one_that_exits_during_start_up_fails_with_its_last_log_lines():
    script = "import sys; print('no checkpoint here', file=sys.stderr); sys.exit(3)"
    with pytest.raises(DidNotStart, match="exited with 3") as failure:
        ServerProcess([sys.executable, "-c", script])
    assert "no checkpoint here" in str(failure.value)


def test_one_that_never_serves_fails_after_its_time_and_is_stopped():
    script = "import time; time.sleep(60)"
    started = time.monotonic()
    with pytest.raises(DidNotStart, match="did not answer 200 within 1"):
        ServerProcess([sys.executable, "-c", script], ready="/", startup_timeout_s=1)
    assert time.monotonic() - started < 30  # SIGTERM ended it, not the 60 s sleep


def test_one_that_ignores_sigterm_is_killed_after_the_grace_period():
    script = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('Uvicorn running on here', file=sys.stderr, flush=True); time.sleep(60)"
    )
    server = ServerProcess([sys.executable, "-c", script], stop_grace_s=0.5)
    started = time.monotonic()
    server.stop()
    assert server.process.returncode == -9  # SIGKILL
    assert time.monotonic() - started < 10
