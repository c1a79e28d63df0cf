"""An export (`vae-export`'s folder) read and made ready to serve, with no torch.

The folder holds `manifest.json` and the files it names (`export_format`): the three ONNX graphs,
the prior's arrays (`prior.npz`), the recorded check (`check.npz`: fixed inputs and eager PyTorch's
outputs for them) and the digit guide's graph. Each is listed with its sha256, and is read only if
it is a plain file next to the manifest, within the size limit, with that hash. At load the runner
must reproduce the recorded outputs within its bound, the check the full image makes against eager
PyTorch, so a torch-free server serves what the full one would or refuses to start.

Whatever is damaged, hashes matching or not, is refused with `ExportError` (a `CheckpointError`)
and one line: the manifest's fields (`export_manifest`), the arrays (`export_arrays`), the graphs
and the check (`export_graphs`); `vae-serve` runs `verify_export` before it starts uvicorn.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from app.inference.artifact.export_arrays import read_check, read_prior, read_typicality
from app.inference.artifact.export_format import (
    GRAPH_OPS,
    MAX_FILE_BYTES,
    MAX_MANIFEST_BYTES,
    ExportError,
    sha256_of,
)
from app.inference.artifact.export_graphs import load_graphs, verify_graphs
from app.inference.artifact.export_manifest import FileEntry, Manifest, parse_manifest
from app.inference.backends.base import BackendInfo, Runner
from app.inference.backends.table import BackendUnavailable, graph_runner
from app.inference.served import ArtifactInfo, LoadedModel, file_identity, warm_up
from models.checkpoint_errors import CheckpointError
from models.prior import Prior
from models.typicality import Typicality


@dataclass(frozen=True)
class Export:
    """A manifest and the verified bytes of every file it names."""

    path: Path
    manifest: Manifest
    sha256: str  # of the manifest itself
    files: dict[str, bytes]  # by role: encode, decode, reconstruct, prior, check


@dataclass(frozen=True)
class VerifiedExport:
    """An export whose prior is read and whose graphs reproduced the recorded check."""

    export: Export
    prior: Prior
    runner: Runner
    error: float  # the largest error against the recorded eager outputs
    typicality: Typicality | None = None


def read_capped(path: Path, limit: int, what: str) -> bytes:
    """A regular file's bytes, refused when it is not one or is over `limit` bytes."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        raise ExportError(f"{what} {path.name} not found") from None
    if not stat.S_ISREG(info.st_mode):
        raise ExportError(f"{what} {path.name} is not a regular file")
    if info.st_size > limit:
        raise ExportError(f"{what} {path.name} is over the {limit} byte limit")
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ExportError(f"{what} {path.name} cannot be read: {exc.strerror}") from None
    if len(data) > limit:
        raise ExportError(f"{what} {path.name} is over the {limit} byte limit")
    return data


def read_listed(folder: Path, entry: FileEntry, role: str) -> bytes:
    """The bytes of a file the manifest lists, checked: a plain name in the manifest's folder
    (no path, no link out of it), its size and its hash."""
    name = entry.file
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise ExportError(f"the manifest's {role!r} file must be a plain name, not {name!r}")
    path = folder / name
    if Path(os.path.realpath(path)).parent != Path(os.path.realpath(folder)):
        raise ExportError(f"the manifest's {role!r} file {name!r} leads out of its folder")
    data = read_capped(path, MAX_FILE_BYTES, "file")
    if sha256_of(data) != entry.sha256:
        raise ExportError(f"{name} does not match its sha256 in the manifest")
    return data


def read_export(path: Path) -> Export:
    """Reads and verifies a manifest and its files; `ExportError` says what is wrong."""
    raw = read_capped(path, MAX_MANIFEST_BYTES, "manifest")
    manifest = parse_manifest(raw, path.name)
    files = {role: read_listed(path.parent, e, role) for role, e in manifest.files.items()}
    if manifest.typicality is not None:
        files["typicality"] = read_listed(path.parent, manifest.typicality, "typicality")
    return Export(path, manifest, sha256_of(raw), files)


def verify_export(path: Path, device: str, *, backend: str, threads: int) -> VerifiedExport:
    """Reads an export, its prior and its check, and runs its graphs on the check: every way
    it can be damaged raises `CheckpointError` (`ExportError`) with one line."""
    if device not in ("auto", "cpu"):
        raise CheckpointError(f"an export serves on the CPU only, not on {device!r}")
    before = file_identity(path)
    export = read_export(path)
    if file_identity(path) != before:
        raise CheckpointError(f"{path} changed while it was being loaded; try again")
    manifest = export.manifest
    names = {role: entry.file for role, entry in manifest.files.items()}
    prior = read_prior(export.files["prior"], names["prior"], manifest.latent_dim)
    cases = read_check(export.files["check"], names["check"], manifest.latent_dim)
    graphs = {op: export.files[op] for op in GRAPH_OPS}
    runner = load_graphs(lambda g: _build_runner(backend, g, threads), graphs, names)
    error = verify_graphs(runner, cases, names)
    typicality = None
    if manifest.typicality is not None:
        typicality = read_typicality(export.files["typicality"], manifest.typicality.file, prior)
    return VerifiedExport(export, prior, runner, error, typicality)


def load_export(
    path: Path, device: str, max_batch_size: int, *, backend: str, threads: int
) -> LoadedModel:
    """Loads, checks and warms an export (see the module's docstring)."""
    verified = verify_export(path, device, backend=backend, threads=threads)
    export, runner, manifest = verified.export, verified.runner, verified.export.manifest
    try:
        warm_up(runner, manifest.latent_dim, (1, 8, max_batch_size))
    except Exception as exc:  # passed the check, yet fails on another batch size
        raise ExportError(f"{path.name}: the graphs fail on a batch of zeros: {exc}") from None
    import onnxruntime

    return LoadedModel(
        metadata=dict(manifest.metadata),
        checkpoint=path,
        sha256=manifest.source_sha256,
        config=dict(manifest.config),
        latent_dim=manifest.latent_dim,
        device="cpu",
        dtype="float32",
        runner=runner,
        backend=BackendInfo(backend, runner.name, runner.precision, verified.error, runner.bound),
        prior=verified.prior,
        artifact=ArtifactInfo(
            "onnx-export", str(path), export.sha256, f"onnxruntime {onnxruntime.__version__}"
        ),
        typicality=verified.typicality,
    )


def _build_runner(backend: str, graphs: dict[str, bytes], threads: int) -> Runner:
    """`auto` is ONNX Runtime (an export serves on the CPU); torch has nothing to run here."""
    if backend == "torch":
        raise CheckpointError("VAE_BACKEND=torch cannot serve an export; use onnxruntime")
    try:
        return graph_runner("onnxruntime" if backend == "auto" else backend, graphs, threads)
    except BackendUnavailable as exc:
        raise CheckpointError(f"VAE_BACKEND={backend}: {exc}") from None
