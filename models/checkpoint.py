"""The checkpoint format: one plain dict, saved atomically, loaded without unpickling code.

Layout (format version 2)::

    {
        "format": "mnist-vae-checkpoint",
        "format_version": 2,
        "model_config": {...VAEConfig fields...},
        "model_state": {...state_dict tensors...},
        "metadata": {preset, training args, epoch, metrics, dataset, sha256, versions, ...},
        "prior": {...},       # optional: a learned prior over z (`models.prior.MixturePrior`)
        "typicality": {...},  # optional: the "is this a digit?" calibration (`models.typicality`)
        "train_state": {...}  # optional: optimizer and RNG state, only for --resume
    }

Version 1 is version 2 without a prior; it still loads, and its prior is N(0, I), which is what
it was trained with. A checkpoint without a `prior` entry also means N(0, I). One without a
`typicality` entry (every checkpoint before issue 30) serves without the typicality score.

Loading goes through `torch.load(weights_only=True)`, so a file that smuggles a pickled callable
is refused instead of executed.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint_errors import CheckpointError
from models.prior import MixturePrior, Prior, PriorError, StandardNormal
from models.vae import ConvVAE, VAEConfig

MAX_PARAMETERS = 200_000_000  # 100x the shipped model; refused before anything is allocated
MAX_WIDTH = 4096
FORMAT_NAME = "mnist-vae-checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def save_checkpoint(
    path: str | os.PathLike,
    model: ConvVAE,
    metadata: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    prior: MixturePrior | dict[str, Any] | None = None,
    typicality: dict[str, Any] | None = None,
) -> Path:
    """Writes next to `path` first and renames, so a crash never leaves a half-written file.

    `prior` is a learned prior (or its stored dict, e.g. carried over from a checkpoint being
    rewritten); without one the checkpoint's prior is N(0, I). `typicality` is a calibration's
    `models.typicality.Typicality.to_dict()` (NumPy arrays become tensors); it is only valid with
    the prior it was made with, so a rewrite with a new prior leaves it out."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": {**default_metadata(), **metadata},
    }
    if prior is not None:
        payload["prior"] = _as_tensors(
            prior.to_dict() if isinstance(prior, MixturePrior) else prior
        )
    if typicality is not None:
        payload["typicality"] = _as_tensors(typicality)
    if train_state is not None:
        payload["train_state"] = train_state
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads and validates the raw dict (no model built): for tools that only need metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"{path} is not a checkpoint: {_first_line(exc)}") from exc
        raise CheckpointError(
            f"{path} is not a safe checkpoint: it holds objects that weights-only loading refuses "
            f"({_unpickler_reason(exc)})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - garbage input makes the unpickler fail in any way
        raise CheckpointError(f"{path} is not a checkpoint: {_first_line(exc)}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a {FORMAT_NAME} file")
    version = payload.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has format version {version!r}; this build reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    for key in ("model_config", "model_state", "metadata"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path} is missing its {key!r} section")
    return payload


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[ConvVAE, dict[str, Any]]:
    """Returns (model in eval mode on `device`, metadata)."""
    model, metadata, _ = load_checkpoint_and_prior(path, device)
    return model, metadata


def load_checkpoint_and_prior(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[ConvVAE, dict[str, Any], Prior]:
    """Returns (model in eval mode on `device`, metadata, prior); the prior stays on the CPU,
    where latents are drawn."""
    payload = read_checkpoint(path)
    model = model_from_payload(payload, source=str(path))
    prior = prior_from_payload(payload, model.latent_dim, source=str(path))
    return model.to(device).eval(), payload["metadata"], prior


def load_checkpoint_parts(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[ConvVAE, dict[str, Any], Prior, dict[str, Any] | None]:
    """`load_checkpoint_and_prior` plus the stored typicality calibration (tensors, as saved;
    `models.typicality.Typicality.from_dict` reads it), or None for a checkpoint without one."""
    payload = read_checkpoint(path)
    model = model_from_payload(payload, source=str(path))
    prior = prior_from_payload(payload, model.latent_dim, source=str(path))
    typicality = payload.get("typicality")
    if typicality is not None and not isinstance(typicality, dict):
        raise CheckpointError(f"{path} has a malformed typicality section")
    return model.to(device).eval(), payload["metadata"], prior, typicality


def _as_tensors(value: Any) -> Any:
    """NumPy arrays (at any depth of dicts) as CPU tensors: what weights-only loading accepts."""
    if isinstance(value, dict):
        return {k: _as_tensors(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def prior_from_payload(
    payload: dict[str, Any], latent_dim: int, source: str = "checkpoint"
) -> Prior:
    """The checkpoint's learned prior, or N(0, I) when it has none (every version 1 file)."""
    stored = payload.get("prior")
    if stored is None:
        return StandardNormal(latent_dim)
    try:
        prior = MixturePrior.from_dict(stored)
    except PriorError as exc:
        raise CheckpointError(f"{source} has an invalid prior: {exc}") from exc
    if prior.dim != latent_dim:
        raise CheckpointError(
            f"{source} has a prior over {prior.dim} dims for a {latent_dim}-dim latent"
        )
    return prior


def model_from_payload(payload: dict[str, Any], source: str = "checkpoint") -> ConvVAE:
    try:
        config = VAEConfig.from_dict(payload["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source} has an invalid model config: {exc}") from exc
    check_model_size(config, payload["model_state"], source)
    model = ConvVAE(config)
    try:
        model.load_state_dict(payload["model_state"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{source}: weights do not match its model config: {_first_line(exc)}"
        ) from exc
    return model


def check_model_size(config: VAEConfig, state: dict[str, Any], source: str = "checkpoint") -> None:
    """Refuses a config whose network would be absurdly large, or larger than its weights, before
    a byte of it is allocated (a few numbers in a small file could otherwise ask for gigabytes
    only to find that the weights do not fit). The network is built on the meta device (shapes,
    no memory) and its size compared with `MAX_PARAMETERS` and with the stored tensors."""
    widths = [*config.channels, config.latent_dim, config.image_size]
    if min(widths) < 1 or max(widths) > MAX_WIDTH or len(config.channels) > 8:
        raise CheckpointError(
            f"{source}: model config out of range (channels, latent_dim and image_size must be "
            f"1..{MAX_WIDTH}, at most 8 stages): {config.to_dict()}"
        )
    if config.res_blocks > 16:
        raise CheckpointError(f"{source}: model config has {config.res_blocks} residual blocks")
    with torch.device("meta"):
        wanted = sum(t.numel() for t in ConvVAE(config).state_dict().values())
    stored = sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))
    if wanted > MAX_PARAMETERS or wanted != stored:
        raise CheckpointError(
            f"{source}: its model config needs {wanted:,} values but the file holds {stored:,} "
            f"(limit {MAX_PARAMETERS:,})"
        )


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_metadata() -> dict[str, Any]:
    return {
        "torch_version": str(torch.__version__),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unpickler_reason(exc: BaseException) -> str:
    """torch's message is a page long; the line naming the refused global is the useful one."""
    for line in str(exc).splitlines():
        if "WeightsUnpickler error" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
    return _first_line(exc)
