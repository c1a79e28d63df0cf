"""The images' torch is pinned (scripts/docker/constraints.txt), so the CUDA build, and the NVIDIA
driver it needs, do not depend on the day an image is built; pyproject.toml's range admits it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "scripts" / "docker" / "constraints.txt"


def _pins() -> dict[str, str]:
    lines = [line.strip() for line in CONSTRAINTS.read_text().splitlines()]
    reqs = [Requirement(line) for line in lines if line and not line.startswith("#")]
    return {r.name: str(r.specifier) for r in reqs}


def test_torch_and_torchvision_are_pinned_exactly_within_pyprojects_range():
    pins = _pins()
    assert set(pins) == {"torch", "torchvision"}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {Requirement(d).name: Requirement(d).specifier for d in project["dependencies"]}
    for name, pin in pins.items():
        version = pin.removeprefix("==")
        assert pin.startswith("==") and re.fullmatch(r"\d+\.\d+\.\d+", version), pin
        assert wanted[name].contains(version), (name, version, wanted[name])


def test_both_images_install_with_the_pins():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^COPY [^\n]*scripts/docker/constraints.txt", dockerfile, re.MULTILINE)
    installs = re.findall(
        r"RUN python /opt/build/requirements\.py(?:[^\n]*\\\n)*[^\n]*", dockerfile
    )
    assert len(installs) == 2
    assert all("--constraint /opt/build/constraints.txt" in run for run in installs)
    assert "!scripts/docker/constraints.txt" in (REPO / ".dockerignore").read_text().splitlines()


def test_the_pin_names_its_cuda_build_and_driver():
    text = " ".join(line.lstrip("# ") for line in CONSTRAINTS.read_text().splitlines())
    assert re.search(r"CUDA \d+\.\d+ build", text) and re.search(r"driver\s+>= \d+", text)
