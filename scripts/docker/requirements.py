"""Installs the images' dependencies into /opt/venv, read from pyproject.toml so that the list has
one home and cannot drift: the GPU image's with `--extra otel`, the CPU image's also `--without
torch torchvision onnx`. `--constraint constraints.txt` pins torch (and so its CUDA build).

uv installs them (parallel downloads and unpacking, bytecode compiled on every core: half pip's
time), run from a throwaway venv so that uv is in no image layer. The CPU image downloads its own
dependencies rather than pruning the GPU image's venv: uninstalling torch's 6 GB on overlayfs made
that build slower (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a venv without `packaging` still has pip's copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def requirements(pyproject: Path, extras: list[str], without: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = project["dependencies"] + [
        dep for extra in extras for dep in project["optional-dependencies"][extra]
    ]
    dropped = {canonicalize_name(name) for name in without}
    return [dep for dep in wanted if canonicalize_name(Requirement(dep).name) not in dropped]


def install(deps: list[str], python: str, constraints: Path | None = None) -> None:
    work = Path(tempfile.mkdtemp(prefix="uv-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", work / "venv"], check=True)
        subprocess.run([work / "venv/bin/pip", "install", "--quiet", "uv>=0.5"], check=True)
        env = {**os.environ, "UV_NATIVE_TLS": "1", "UV_CACHE_DIR": str(work / "cache")}
        if "PIP_CERT" in env:
            env["SSL_CERT_FILE"] = env["PIP_CERT"]
        command = [work / "venv/bin/uv", "pip", "install", "--python", python, "--compile-bytecode"]
        command += ["--constraint", str(constraints)] if constraints else []
        subprocess.run([*command, *deps], check=True, env=env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", nargs="*", default=[], help="optional-dependency groups to add")
    parser.add_argument("--without", nargs="*", default=[], help="distributions to leave out")
    parser.add_argument("--python", default="/opt/venv/bin/python", help="the target interpreter")
    parser.add_argument(
        "--constraint", type=Path, default=None, help="pins (constraints.txt: the images' torch)"
    )
    args = parser.parse_args()
    deps = requirements(args.pyproject, args.extra, args.without)
    install(deps, args.python, args.constraint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
