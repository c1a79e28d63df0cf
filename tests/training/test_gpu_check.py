"""`make gpu-check` without a GPU: a clear "no GPU" and exit 0; and its steps' bookkeeping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
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
