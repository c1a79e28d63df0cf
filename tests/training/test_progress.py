"""Progress bars on the long commands: on stderr with rate and ETA when someone watches a
terminal, absent with --no-progress or when stderr is a file or pipe, never in stdout's JSON."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from app.inference.artifact.export_writer import main as export_main
from models.progress import progress_bar
from training.classifier import main as classifier_main
from training.fit_prior import main as fit_prior_main

REPO = Path(__file__).resolve().parents[2]


class TerminalStderr(io.StringIO):
    """A stderr that says it is a terminal and keeps what was written."""

    def isatty(self) -> bool:
        return True


def _terminal(monkeypatch: pytest.MonkeyPatch) -> TerminalStderr:
    """Called in the test body: pytest's capture puts its own sys.stderr back after fixtures."""
    stream = TerminalStderr()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_a_bar_on_a_terminal_shows_its_rate_and_eta(monkeypatch):
    terminal = _terminal(monkeypatch)
    with progress_bar(total=4, desc="scoring", unit="image") as bar:
        bar.update(4)
    shown = terminal.getvalue()
    assert "scoring" in shown and "image/s" in shown and "<" in shown  # elapsed<remaining


def test_no_bar_when_switched_off_or_when_stderr_is_not_a_terminal(monkeypatch):
    terminal = _terminal(monkeypatch)
    with progress_bar(total=4, desc="scoring", enabled=False) as bar:
        bar.update(4)
    assert terminal.getvalue() == ""
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    with progress_bar(total=4, desc="scoring") as bar:
        bar.update(4)
    assert piped.getvalue() == ""


def _eval_on_a_terminal(checkpoint: Path, mnist_dir: Path, *extra: str) -> tuple[dict, str]:
    """vae-eval with stderr on a pseudo-terminal and stdout on a pipe: (its JSON, the terminal)."""
    leader, follower = pty.openpty()
    # 120 columns: on a terminal that reports no width at all, tqdm draws nothing
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    argv = [str(checkpoint), "--k", "5", "--limit", "300", "--samples", "0", *extra]
    cmd = [sys.executable, "-m", "training.evaluate", *argv, "--data-dir", str(mnist_dir)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    out, _ = proc.communicate(timeout=120)
    os.close(leader)
    assert proc.returncode == 0, shown.decode(errors="replace")[-2000:]
    return json.loads(out), shown.decode(errors="replace")


def test_vae_eval_shows_the_likelihood_progress_on_the_terminal_and_clean_json_on_stdout(
    tiny_checkpoint, mnist_dir
):
    metrics, shown = _eval_on_a_terminal(tiny_checkpoint, mnist_dir)
    assert metrics["iwae_k"] == 5 and metrics["test_images"] == 300
    assert "IWAE NLL, K=5" in shown and "digit/s" in shown


def test_vae_eval_no_progress_keeps_the_terminal_quiet(tiny_checkpoint, mnist_dir):
    metrics, shown = _eval_on_a_terminal(tiny_checkpoint, mnist_dir, "--no-progress")
    assert metrics["iwae_k"] == 5
    assert "IWAE NLL" not in shown


def test_vae_fit_prior_shows_encoding_and_em_progress(
    monkeypatch, capsys, tiny_checkpoint, mnist_dir, tmp_path
):
    terminal = _terminal(monkeypatch)
    out = tmp_path / "with-prior.pt"
    argv = [str(tiny_checkpoint), "--limit", "2000", "--out", str(out)]
    assert fit_prior_main([*argv, "--data-dir", str(mnist_dir)]) == 0
    assert "encoding" in terminal.getvalue() and "EM per digit" in terminal.getvalue()
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(out)


def test_vae_train_classifier_shows_each_epochs_batches(monkeypatch, mnist_dir, tmp_path):
    terminal = _terminal(monkeypatch)
    argv = ["--subset", "256", "--epochs", "1", "--channels", "8", "16", "--hidden", "32"]
    out = tmp_path / "clf.pt"
    assert classifier_main([*argv, "--data-dir", str(mnist_dir), "--out", str(out)]) == 0
    assert "epoch 1/1" in terminal.getvalue() and "batch" in terminal.getvalue()


def test_vae_export_shows_its_steps_and_not_with_no_progress(
    monkeypatch, tiny_checkpoint, tmp_path
):
    terminal = _terminal(monkeypatch)
    argv = ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "onnx")]
    assert export_main([*argv, "--no-progress"]) == 0
    assert terminal.getvalue() == ""
    assert export_main(argv) == 0
    assert "vae-export" in terminal.getvalue()
