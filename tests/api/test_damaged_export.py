"""A damaged export is refused with one line, never a traceback or a 500 (issue 26, point 7).

The shipped model is exported once with `vae-export`'s own code; each damage in
`damaged_exports.DAMAGES` breaks a hard-linked copy of it and rewrites the manifest's sha256s, so
the hash check passes and only reading the bytes can refuse it. Every damage is held to three
doors: loading it in-process raises `CheckpointError`; `vae-serve` pointed at it prints one line
and exits with 2 (its check, in-process for all, and a real subprocess for a few); and
`/admin/reload` answers 409 while the old model serves on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from damaged_exports import DAMAGES, MANIFEST, Damage, copy_export

from app.inference.artifact.export_guide import load_onnx_guide
from app.inference.artifact.loading import load_model
from app.server import cli
from harness.live_server import REPO, VAE_SERVE, LiveServer, server_env
from harness.processes import free_port
from models.checkpoint_errors import CheckpointError

SHIPPED = REPO / "models" / "mnist-vae.pt"
GUIDE = REPO / "models" / "mnist-digit-guide.pt"
GUIDE_FILE = "digit-guide.onnx"
ADMIN = "damaged-export-admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
ONE_LINE = "vae-serve: cannot serve: "
SUBPROCESS_DAMAGES = (
    "graphs-a-list",
    "decode-random-bytes",
    "prior-truncated",
    "decode-wrong-numbers",
    "guide-random-bytes",
)

pytestmark = pytest.mark.skipif(
    not (SHIPPED.is_file() and GUIDE.is_file()), reason="the shipped model and guide are needed"
)


def ids(damages: list[Damage]) -> list[str]:
    return [d.name for d in damages]


CHECKPOINT_DAMAGES = [d for d in DAMAGES if not d.guide_only]


@pytest.fixture(scope="session")
def exported(shipped_export: Path) -> Path:
    """The shipped checkpoint and guide through `vae-export`: the good folder."""
    return shipped_export


@pytest.fixture(scope="session")
def damaged(exported: Path) -> dict[str, Path]:
    """Each damage's folder, inside the good export's (where `/admin/reload` may load from)."""
    folders = {}
    for damage in DAMAGES:
        folder = copy_export(exported, exported / f"damaged-{damage.name}")
        damage.apply(folder)
        folders[damage.name] = folder
    return folders


def test_the_damage_names_are_unique() -> None:
    assert len({d.name for d in DAMAGES}) == len(DAMAGES) >= 25


def test_the_good_export_loads(exported: Path) -> None:
    loaded = load_model(exported / MANIFEST, "cpu", 8, threads=1)
    assert loaded.artifact.kind == "onnx-export"
    assert load_onnx_guide(exported / GUIDE_FILE, candidates=4).runtime == "onnxruntime"


@pytest.mark.parametrize("damage", DAMAGES, ids=ids(DAMAGES))
def test_loading_raises_a_one_line_checkpoint_error(damaged, damage: Damage) -> None:
    folder = damaged[damage.name]
    with pytest.raises(CheckpointError) as refused:
        if damage.guide_only:
            load_onnx_guide(folder / GUIDE_FILE, candidates=4)
        else:
            load_model(folder / MANIFEST, "cpu", 8, threads=1)
    reason = str(refused.value)
    assert reason and "\n" not in reason and len(reason) < 2000, reason


@pytest.mark.parametrize("damage", DAMAGES, ids=ids(DAMAGES))
def test_vae_serve_refuses_to_start_with_one_line(
    damaged, damage: Damage, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`vae-serve`'s own check, in-process: it must refuse before uvicorn loads the app (where a
    refusal is a traceback per worker)."""
    folder = damaged[damage.name]
    for key in [k for k in os.environ if k.startswith("VAE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("VAE_DEVICE", "cpu")
    monkeypatch.setenv("VAE_DIGIT_GUIDE", str(folder / GUIDE_FILE))
    served = []
    monkeypatch.setattr(cli, "serve", lambda *args, **kwargs: served.append(args))
    code = cli.main(["--checkpoint", str(folder / MANIFEST)])
    err = capsys.readouterr().err
    assert not served, "vae-serve went on to serve it"
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ONE_LINE), err


def test_a_real_vae_serve_exits_2_with_one_line(damaged) -> None:
    """A few damages through the real process (in parallel: each start costs seconds)."""
    runs = {}
    for name in SUBPROCESS_DAMAGES:
        folder = damaged[name]
        env = server_env(folder / MANIFEST, VAE_DIGIT_GUIDE=str(folder / GUIDE_FILE))
        command = [*VAE_SERVE, "--host", "127.0.0.1", "--port", str(free_port())]
        runs[name] = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    wrong = {}
    for name, process in runs.items():
        try:
            out, err = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        lines = err.splitlines()
        one_line = len(lines) == 1 and lines[0].startswith(ONE_LINE) and not out
        if process.returncode != 2 or not one_line:
            wrong[name] = f"exit {process.returncode}: {err[-1500:]}"
    assert not wrong, wrong


@pytest.fixture(scope="module")
def serving(exported: Path) -> Iterator[LiveServer]:
    with LiveServer(
        exported / MANIFEST,
        ready=True,
        VAE_ADMIN_TOKEN=ADMIN,
        VAE_DIGIT_GUIDE=str(exported / GUIDE_FILE),
    ) as server:
        yield server


def model_now(server: LiveServer) -> dict:
    """What identifies the serving model in `/model`: a refused reload must change none of it."""
    model = httpx.get(f"{server.url}/model", timeout=30).json()
    return {k: model[k] for k in ("checkpoint", "sha256", "loaded_at", "artifact")}


@pytest.fixture(scope="module")
def first_model(serving: LiveServer) -> dict:
    """`/model` before any reload (re-taken if a failing case swapped models and was undone)."""
    return model_now(serving)


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGES, ids=ids(CHECKPOINT_DAMAGES))
def test_reload_is_refused_and_the_old_model_stays(
    serving: LiveServer, first_model: dict, exported: Path, damaged, damage: Damage
) -> None:
    url = f"{serving.url}/admin/reload"
    asked = f"damaged-{damage.name}/{MANIFEST}"
    response = httpx.post(url, json={"checkpoint": asked}, headers=ADMIN_HEADERS, timeout=60)
    try:
        assert response.status_code == damage.reload_status, response.text[:2000]
        assert "\n" not in response.json()["detail"]
        assert model_now(serving) == first_model
    finally:
        if response.status_code not in (404, 409):  # it may have swapped: undo, for the rest
            good = {"checkpoint": str(exported / MANIFEST)}
            httpx.post(url, json=good, headers=ADMIN_HEADERS, timeout=60)
            first_model.update(model_now(serving))


def test_after_the_refusals_the_old_model_still_serves(
    serving: LiveServer, first_model: dict
) -> None:
    sample = httpx.post(f"{serving.url}/sample", json={"n": 2, "seed": 1}, timeout=30)
    assert sample.status_code == 200, sample.text[:2000]
    assert sample.headers["content-type"] == "image/png"
    assert model_now(serving) == first_model
    assert first_model["checkpoint"].endswith(MANIFEST) and "damaged-" not in str(first_model)


def test_the_subprocesses_run_this_checkout() -> None:
    """The subprocesses run the worktree's code with this interpreter (not an installed copy)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import app; print(app.__file__)"],
        cwd=REPO, capture_output=True, text=True, env=server_env(SHIPPED),
    )  # fmt: skip
    assert Path(probe.stdout.strip()).is_relative_to(REPO), probe.stdout
