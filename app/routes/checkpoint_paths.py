"""Which files `/admin/reload` may load: regular files inside the checkpoint directory, only.

Any server path would be too much: an upload still open as `/proc/self/fd/N` could be loaded as
weights, and the answers would tell which server files exist. So a path is checked as text first,
then resolved (symlinks included) and must stay inside `VAE_CHECKPOINT_DIR` (default: the folder
of the served checkpoint). Every refusal is a 4xx whose message names only what the caller sent.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from app.errors import InvalidInput, NotFound, PayloadTooLarge, ReloadPathRefused

MAX_PATH_CHARS = 4096
MAX_COMPONENT_BYTES = 255
MAX_CHECKPOINT_BYTES = 1 << 30  # the shipped model is 8.4 MB
FORBIDDEN_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def checkpoint_root(configured: Path) -> Path:
    """The directory, resolved once; refuses to serve reloads from /proc, /sys or /dev."""
    root = Path(os.path.realpath(configured))
    for forbidden in FORBIDDEN_ROOTS:
        if root == forbidden or forbidden in root.parents:
            raise ValueError(f"checkpoint directory {configured} is inside {forbidden}")
    return root


def resolve_checkpoint(requested: str, root: Path) -> Path:
    """The file that `requested` (relative to `root`, or absolute inside it) names.

    Raises `InvalidInput` (422) for malformed text, `ReloadPathRefused` (403) for anything
    outside `root`, `NotFound` (404) when no regular file is there, `PayloadTooLarge` (413).
    """
    _check_text(requested)
    candidate = Path(requested) if os.path.isabs(requested) else root / requested
    resolved = Path(os.path.realpath(candidate))  # follows every symlink, even dangling ones
    if resolved != root and root not in resolved.parents:
        raise ReloadPathRefused(f"{requested!r} is outside the checkpoint directory")
    try:
        info = os.stat(resolved)
    except (OSError, ValueError):
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        raise NotFound(f"no checkpoint file {requested!r} in the checkpoint directory")
    if info.st_size > MAX_CHECKPOINT_BYTES:
        raise PayloadTooLarge(
            f"{requested!r} is {info.st_size} bytes, over the {MAX_CHECKPOINT_BYTES} byte limit"
        )
    return resolved


def shown_in_directory(path: Path, root: Path) -> str:
    """`path` as answers may show it: relative to `root`, or by its file name alone."""
    resolved = Path(os.path.realpath(path))
    if root in resolved.parents:
        return str(resolved.relative_to(root))
    return resolved.name


def _check_text(requested: str) -> None:
    problem = None
    if not requested.strip():
        problem = "is empty"
    elif len(requested) > MAX_PATH_CHARS:
        problem = f"is longer than {MAX_PATH_CHARS} characters"
    elif any(ord(c) < 32 or ord(c) == 127 for c in requested):
        problem = "holds a control character"
    else:
        try:
            parts = [p.encode() for p in Path(requested).parts]
        except UnicodeEncodeError:
            problem = "is not valid UTF-8"
        else:
            if any(len(p) > MAX_COMPONENT_BYTES for p in parts):
                problem = f"has a name longer than {MAX_COMPONENT_BYTES} bytes"
    if problem:
        raise InvalidInput(f"the checkpoint path {problem}")
