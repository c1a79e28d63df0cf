"""The service runs on a read-only root file system with a writable TMPDIR, as the Kubernetes
manifests run it (`readOnlyRootFilesystem: true`, an emptyDir on /tmp).

`vae-serve` starts in a private mount namespace where `/` is remounted read-only and only a fresh
tmpfs is writable (TMPDIR); then every kind of request is made, including an upload large enough
that the multipart parser spools it to a temporary file. Skips where this machine does not allow
mount namespaces.
"""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.live_server import LiveServer


def _mounts(scratch: Path) -> str:
    """Shell commands (run in a new mount namespace) for a read-only `/` and a tmpfs `scratch`."""
    return f"mount --make-rprivate / && mount -o remount,bind,ro / && mount -t tmpfs t {scratch}"


def _namespaces_work(scratch: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = _mounts(scratch)
    done = subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True, timeout=30)
    return done.returncode == 0


def _big_png() -> bytes:
    """A real digit photo stand-in: a light page with a dark stroke and noise, over 1 MB as PNG."""
    rng = np.random.default_rng(0)
    page = rng.integers(180, 256, size=(1200, 1200), dtype=np.uint8)
    page[300:900, 570:630] = 20  # a "1"
    buffer = io.BytesIO()
    Image.fromarray(page).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


@pytest.mark.slow
def test_serves_everything_with_only_tmpdir_writable(tiny_checkpoint, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if not _namespaces_work(scratch):
        pytest.skip("no private mount namespaces here (unshare -m needs CAP_SYS_ADMIN)")
    mounts = _mounts(scratch)
    server = LiveServer(
        tiny_checkpoint,
        wrap=lambda serve: ["unshare", "-m", "sh", "-c", f"{mounts} && exec {shlex.join(serve)}"],
        TMPDIR=str(scratch),
        MPLCONFIGDIR=str(scratch / "matplotlib"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    try:
        big = _big_png()
        assert len(big) > 1024 * 1024  # Starlette spools uploads over 1 MB to TMPDIR
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.get("/readyz").status_code == 200
            assert client.post("/sample", json={"n": 4, "seed": 1}).status_code == 200
            files = {"file": ("page.png", big, "image/png")}
            response = client.post("/reconstruct", files=files)
            assert response.status_code == 200, response.text
            assert client.get("/encode", params={"example": "7-0"}).status_code == 200
            index = client.post("/v2/repository/index").json()
            assert len(index) == 2
    finally:
        server.stop()
    assert not [line for line in server.log if "Read-only file system" in line], "".join(server.log)
