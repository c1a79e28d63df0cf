"""An export's `manifest.json`, parsed and type-checked before anything trusts a field of it.

`vae-export` writes it (`export_writer`). A damaged or hand-edited one is refused here with
`ExportError` and one line; unchecked, a wrong type surfaced later as a traceback at start-up, a
500 on `/admin/reload`, or a model that loaded and then failed `/model` or `/sample`. Only the
fields the server reads are checked; the rest (`exported_with`, the check's `max_error`) is
information for people.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from app.inference.artifact.export_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    GRAPH_OPS,
    ExportError,
)
from app.schemas import MAX_LATENT_DIM

MAX_DEPTH = 32  # vae-export writes 4 levels; `/model` answers with the metadata, so keep it flat
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FileEntry:
    """A file the manifest lists: its name in the export's folder and its sha256."""

    file: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The fields the server reads, each of the type it needs."""

    files: dict[str, FileEntry]  # by role: encode, decode, reconstruct, prior, check
    latent_dim: int
    source_sha256: str  # of the torch checkpoint the weights come from
    config: dict[str, Any]
    metadata: dict[str, Any]
    digit_guide: FileEntry | None
    typicality: FileEntry | None = None  # the "is this a digit?" calibration; None: no score


def parse_manifest(raw: bytes, name: str) -> Manifest:
    """The manifest in `raw` (the file `name`), or `ExportError` saying what is wrong with it."""
    data = parse_json(raw, name)
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ExportError(f"{name} is not a {FORMAT_NAME} manifest (see vae-export)")
    version = data.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ExportError(
            f"{name} has format version {version!r}; this build reads version {FORMAT_VERSION}"
        )
    return _fields(data, name)


def parse_json(raw: bytes | str, name: str) -> Any:
    """JSON that `/model` can answer with again: no NaN or infinity, at most `MAX_DEPTH` deep."""
    try:
        data = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ExportError(f"{name} nests too deeply to be read as JSON") from None
    except ValueError as exc:  # not UTF-8, not JSON, NaN, an integer of over 4300 digits
        raise ExportError(f"{name} is not JSON: {exc}") from None
    if _depth(data) > MAX_DEPTH:
        raise ExportError(f"{name} nests deeper than {MAX_DEPTH} levels")
    return data


def _no_constant(constant: str) -> float:
    raise ValueError(f"{constant} is not a number JSON allows (nor can /model answer it)")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # inf (1e999) or nan
        raise ValueError(f"{text[:20]} is out of a float's range")
    return value


def _depth(value: Any) -> int:
    """How deep lists and objects nest in `value`, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _fields(data: dict[str, Any], name: str) -> Manifest:
    graphs = data.get("graphs")
    if not isinstance(graphs, dict):
        raise ExportError(f"{name}: 'graphs' must map {', '.join(GRAPH_OPS)} to files")
    files = {op: _entry(graphs.get(op), f"graphs.{op}", name) for op in GRAPH_OPS}
    files |= {role: _entry(data.get(role), role, name) for role in ("prior", "check")}
    guide = data.get("digit_guide")
    typicality = data.get("typicality")
    source = data.get("source")
    if not isinstance(source, dict) or not _is_sha256(source.get("sha256")):
        raise ExportError(f"{name}: 'source' must give the checkpoint's sha256 (64 hex digits)")
    return Manifest(
        files=files,
        latent_dim=_latent_dim(data.get("latent_dim"), name),
        source_sha256=source["sha256"],
        config=_object(data.get("config"), "config", name),
        metadata=_metadata(data.get("metadata"), name),
        digit_guide=None if guide is None else _entry(guide, "digit_guide", name),
        typicality=None if typicality is None else _entry(typicality, "typicality", name),
    )


def _entry(entry: Any, role: str, name: str) -> FileEntry:
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
        raise ExportError(f"{name}: {role!r} must be {{'file': name, 'sha256': hex}}")
    if not _is_sha256(entry.get("sha256")):
        raise ExportError(f"{name}: {role!r} has no sha256 of 64 lowercase hex digits")
    return FileEntry(entry["file"], entry["sha256"])


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def _latent_dim(value: Any, name: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_LATENT_DIM:
        raise ExportError(f"{name}: 'latent_dim' must be an integer 1..{MAX_LATENT_DIM}")
    return value


def _object(value: Any, field: str, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ExportError(f"{name}: {field!r} must be an object, not {type(value).__name__}")
    return value


def _metadata(value: Any, name: str) -> dict[str, Any]:
    """The training metadata, with the types `/model` and the `/v2` routes read it as."""
    metadata = _object(value, "metadata", name)
    for key, kinds in (("preset", str), ("metrics", dict), ("dataset", dict)):
        if metadata.get(key) is not None and not isinstance(metadata[key], kinds):
            raise ExportError(f"{name}: 'metadata.{key}' must be a {kinds.__name__} or null")
    dataset = metadata.get("dataset") or {}
    if dataset.get("name") is not None and not isinstance(dataset["name"], str):
        raise ExportError(f"{name}: 'metadata.dataset.name' must be a string or null")
    return metadata
