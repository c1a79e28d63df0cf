"""`make gpu-check` without a GPU: a clear "no GPU" and exit 0; and its steps' bookkeeping: the
wheels' PYTHONPATH kept, a step stopped with its whole process group, each device command planned
within 8 minutes. (The commands themselves: tests/training/test_gpu_rehearsal.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import gpu_check  # noqa: E402
from gpu_check import Step, markdown, run_step  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_make_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu-check"
    cmd = ["make", "-s", "gpu-check", f"GPU_PYTHON={sys.executable}", f"GPU_CHECK_OUT={out}"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no GPU" in done.stdout
    assert not out.exists()


def test_a_step_whose_packages_are_missing_is_skipped_with_the_reason():
    step = Step("peers", [sys.executable, "-c", "pass"], 30, needs=("no_such_module_here",))
    outcome = run_step(step, seconds_left=100)
    assert (outcome.status, outcome.reason) == ("skipped", "missing: no_such_module_here")


def test_a_failing_step_is_recorded_and_a_spent_budget_skips_the_rest():
    failing = Step("fails", [sys.executable, "-c", "raise SystemExit(3)"], 30)
    outcome = run_step(failing, seconds_left=100)
    assert (outcome.status, outcome.reason) == ("failed", "exit code 3")
    assert run_step(failing, seconds_left=5).status == "skipped"


def test_a_step_reads_back_the_json_it_wrote(tmp_path):
    out = tmp_path / "r.json"
    code = f"open({str(out)!r}, 'w').write('{{\"images_per_second\": {{\"x\": 5}}}}')"
    outcome = run_step(Step("train-bench", [sys.executable, "-c", code], 30, json_out=out), 100)
    assert outcome.status == "ok" and outcome.result == {"images_per_second": {"x": 5}}
    report = {
        "started": "now",
        "device": "a GPU",
        "torch": "2",
        "commit": "abc",
        "seconds": 12.0,
        "budget_s": 480.0,
        "steps": [outcome.__dict__],
    }
    table = markdown(report)
    assert "| train-bench | ok |" in table and "| x | 5 |" in table


def test_a_step_keeps_the_pythonpath_it_was_given_after_the_checkout(monkeypatch, tmp_path):
    """On the device machine PYTHONPATH names the carried wheels: a step must still find them."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/tmp/site", "/opt/more"]))
    code = "import json, os; print(json.dumps(os.environ['PYTHONPATH'].split(os.pathsep)))"
    outcome = run_step(Step("env", [sys.executable, "-c", code], 30), 100)
    assert outcome.status == "ok", outcome.output_tail
    assert json.loads(outcome.output_tail) == [str(REPO), "/tmp/site", "/opt/more"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie waits for a parent to reap it: it runs no more


def _wait_dead(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


SPAWN = (
    "import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True)"
)


def test_a_step_stopped_at_its_limit_takes_its_children_with_it(monkeypatch):
    """A benchmark killed at its limit must not leave its `vae-serve` running."""
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 0.0)
    step = Step("hangs", [sys.executable, "-c", SPAWN + "; time.sleep(60)"], 2)
    started = time.monotonic()
    outcome = run_step(step, seconds_left=100)
    assert outcome.status == "timeout" and outcome.reason == "stopped at its limit of 2 s"
    assert time.monotonic() - started < 15
    assert _wait_dead(int(outcome.output_tail.split()[0]))


def test_what_a_finished_step_left_running_is_stopped_too():
    outcome = run_step(Step("leaves", [sys.executable, "-c", SPAWN], 30), seconds_left=100)
    assert outcome.status == "ok"
    assert _wait_dead(int(outcome.output_tail.split()[0]))


def test_the_steps_of_a_phase_run_side_by_side():
    steps = [Step(n, [sys.executable, "-c", "import time; time.sleep(1.5)"], 30) for n in "abc"]
    started, seen = time.monotonic(), []
    outcomes = gpu_check.run_phase(steps, 100, on_done=lambda o: seen.append(o.name))
    assert [o.status for o in outcomes] == ["ok"] * 3 and sorted(seen) == ["a", "b", "c"]
    assert time.monotonic() - started < 4.0


def test_each_device_command_is_planned_within_8_minutes_at_full_size():
    plan = gpu_check.plan()
    assert set(plan) == set(gpu_check.COMMANDS)
    assert all(seconds <= gpu_check.COMMAND_S for seconds in plan.values()), plan
    assert gpu_check.COMMAND_S <= 8 * 60


def test_a_stopped_command_stops_the_steps_still_running(tmp_path):
    """SIGTERM (here: the exception it raises, from the callback) while a phase runs: no step,
    and nothing a step started, outlives it."""
    quick = Step("quick", [sys.executable, "-c", "import time; time.sleep(2)"], 30)
    slow = Step("slow", [sys.executable, "-c", SPAWN + "; time.sleep(60)"], 30)

    def stop(outcome):
        raise gpu_check.Stopped(15)

    with pytest.raises(gpu_check.Stopped):
        gpu_check.run_phase([quick, slow], 100, on_done=stop, logs=tmp_path)
    assert _wait_dead(int((tmp_path / "slow.log").read_text().split()[0]))
