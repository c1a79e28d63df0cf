"""`make gpu-check REHEARSE=1`: the three device commands (check, train, evaluate) run end to end
on the CPU at tiny sizes, as the lent GPU machine runs them (scripts/gpu_rehearsal.py): a copy of
the tree, a python3 with only that machine's packages, the carried wheels and MNIST, a fresh $OUT
each. It fails on any step that fails for a reason other than "no CUDA", on an $OUT the device
tool would not bring back, and on a command planned over 8 minutes at full size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_device_commands_pass_their_rehearsal_on_the_cpu(mnist_dir, tmp_path):
    out = tmp_path / "rehearsal"
    cmd = ["make", "-s", "gpu-check", "REHEARSE=1", f"GPU_PYTHON={sys.executable}"]
    cmd.append(f"GPU_CHECK_OUT={out}")
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    result = json.loads((out / "rehearsal.json").read_text())
    assert list(result["commands"]) == ["check", "train", "evaluate"]
    assert result["problems"] == []
    check, train, evaluate = (result["commands"][c] for c in ("check", "train", "evaluate"))
    assert check["steps"]["serve-bench, graphs on"] == "ok"  # the web stack came from the wheels
    assert "mnist-vae.pt" in train["out"] and "runs.tgz" in train["out"]
    assert {"eval trained", "eval shipped"} <= set(evaluate["steps"])
    assert "mnist-vae.pt" in evaluate["out"]
