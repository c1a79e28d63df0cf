"""A prior as an `.npz` (what an export carries, read without torch), and the `.npz` reading the
typicality's file shares: a JSON `rules` object beside plain arrays, no pickles."""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from models.prior import MixturePrior, Prior, PriorError, StandardNormal

# What reading a damaged .npz raises: numpy's and zipfile's errors for a truncated or foreign
# file, and KeyError to RecursionError for arrays or rules that are missing or malformed.
NPZ_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    RecursionError,
    MemoryError,
    zipfile.BadZipFile,
    zlib.error,
)


def save_npz(prior: Prior, path: Path | BinaryIO) -> None:
    """The prior as arrays plus one JSON string of its rules; `load_npz` reads it back."""
    if isinstance(prior, StandardNormal):
        np.savez(path, rules=json.dumps({"kind": "standard", "dim": prior.dim}))
        return
    stored = prior.to_dict()
    arrays: dict[str, np.ndarray] = {}
    covariance: dict[str, str] = {}
    for part in ("mixture", "classes"):
        if stored[part] is None:
            continue
        covariance[part] = stored[part].pop("covariance")
        arrays |= {f"{part}.{key}": value for key, value in stored[part].items()}
    rules = {key: stored[key] for key in ("kind", "accept_threshold", "max_rounds", "draw_from")}
    rules |= {"covariance": covariance, "config": prior.config}
    np.savez(path, rules=json.dumps(rules), **arrays)


def read_npz(path: Path | BinaryIO, error: type[Exception]) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON `rules` object and the arrays of a `.npz` written as `save_npz` writes (no
    pickles); rules that are not an object raise `error`, a damaged file `NPZ_READ_ERRORS`."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    rules = json.loads(str(arrays.pop("rules")))
    if not isinstance(rules, dict):
        raise error("its rules are not a JSON object")
    return rules, arrays


def load_npz(path: Path | BinaryIO) -> Prior:
    """Reads what `save_npz` wrote; no pickles (`allow_pickle=False`). Anything else, damaged
    or not a prior, raises `PriorError`, with the checks every prior passes."""
    try:
        rules, arrays = read_npz(path, PriorError)
        if rules.get("kind") == "standard":
            return StandardNormal(int(rules["dim"]))
        parts: dict[str, Any] = {}
        for key, value in arrays.items():
            part, name = key.split(".", 1)
            parts.setdefault(part, {})[name] = value
        for part, covariance in rules.get("covariance", {}).items():
            parts[part]["covariance"] = covariance
        return MixturePrior.from_dict({**rules, "classes": None, **parts})
    except PriorError:
        raise
    except NPZ_READ_ERRORS as exc:
        name = getattr(path, "name", "the prior")
        raise PriorError(f"{name} is not an exported prior: {exc!r}") from exc
