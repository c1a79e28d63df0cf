"""Reload answers name the checkpoint as the caller did, never by the server's absolute path
(issue 22, point 10), on a real `vae-serve` over loopback."""

from __future__ import annotations

import shutil

import httpx

from harness.live_server import LiveServer

TOKEN = "reload-names-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_reload_answers_show_the_callers_name_not_the_servers_path(tiny_checkpoint, tmp_path):
    folder = tmp_path / "served"
    (folder / "runs").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, folder / "model.pt")
    shutil.copy(tiny_checkpoint, folder / "runs" / "next.pt")
    (folder / "broken.pt").write_bytes(b"not a checkpoint")
    server = LiveServer(folder / "model.pt", VAE_ADMIN_TOKEN=TOKEN)
    secret = str(tmp_path)  # the server's own folder: no answer may carry it
    try:
        url = f"{server.url}/admin/reload"
        by_name = httpx.post(url, json={"checkpoint": "runs/next.pt"}, headers=AUTH, timeout=60)
        assert by_name.status_code == 200, by_name.text
        assert by_name.json()["checkpoint"] == "runs/next.pt"
        assert secret not in by_name.text

        model = httpx.get(f"{server.url}/model", timeout=30)
        assert model.json()["checkpoint"] == "runs/next.pt" and secret not in model.text

        refused = httpx.post(url, json={"checkpoint": "broken.pt"}, headers=AUTH, timeout=60)
        assert refused.status_code == 409
        assert "broken.pt" in refused.json()["detail"] and secret not in refused.text

        again = httpx.post(url, headers=AUTH, timeout=60)  # the configured checkpoint
        assert again.status_code == 200 and again.json()["checkpoint"] == "model.pt"
        assert secret not in again.text
    finally:
        server.stop()
    assert any(secret in line for line in server.log), "the server's log keeps the full path"
