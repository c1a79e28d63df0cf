"""The house's layers hold: the import-linter contracts in pyproject.toml, checked for real.

`app/`: server -> main -> routes -> http | inference | images -> config, deadline, errors, schemas;
`app/inference/`: engine -> artifact (model files) -> served -> backends; `app/` and `training/`
build on `models/` and never import each other; no import cycles anywhere; the development
harness (`harness/`) and the service never import each other.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" KEPT") == 6  # every contract in pyproject.toml was checked
