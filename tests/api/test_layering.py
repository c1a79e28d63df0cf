"""Serving depends on `models/` only: nothing the service imports may import `training/`."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVING_PACKAGES = ("app", "models")  # the service and everything it imports from this repo


def imported_modules(source: Path) -> set[str]:
    tree = ast.parse(source.read_text(), filename=str(source))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_serving_module_imports_the_training_package():
    offenders = {
        str(path.relative_to(REPO)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] == "training"
        )
        for package in SERVING_PACKAGES
        for path in (REPO / package).rglob("*.py")
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}
