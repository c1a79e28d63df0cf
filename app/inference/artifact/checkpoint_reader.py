"""A torch checkpoint (`.pt`, `models.checkpoint`) read with torch and made ready to serve:
loaded, moved, given its checked backend, and warmed."""

from __future__ import annotations

from pathlib import Path

import torch

from app.inference.backends.eager import TorchRunner
from app.inference.backends.select import select_runner
from app.inference.served import ArtifactInfo, LoadedModel, file_identity, warm_up
from models.checkpoint import CheckpointError, file_sha256, load_checkpoint_parts
from models.runtime import resolve_device
from models.typicality import Typicality, TypicalityError


def load_checkpoint_model(
    path: Path,
    device: str,
    fp16: bool,
    max_batch_size: int,
    *,
    backend: str,
    threads: int,
    cuda_graphs: bool,
) -> LoadedModel:
    """Loads, moves and warms a checkpoint with the backend `select_runner` picks (the options as
    `loading.load_model` takes them); raises `CheckpointError` with a one-line reason."""
    torch.set_num_threads(threads)
    dev = resolve_device(device)
    before = file_identity(path)
    model, metadata, prior, stored_typicality = load_checkpoint_parts(path, device=dev)
    typicality = None
    if stored_typicality is not None:
        try:
            typicality = Typicality.from_dict(stored_typicality, prior)
        except TypicalityError as exc:
            raise CheckpointError(f"{path}: its typicality calibration: {exc}") from None
    sha256 = file_sha256(path)
    if file_identity(path) != before:  # replaced meanwhile: the hash might not be these weights
        raise CheckpointError(f"{path} changed while it was being loaded; try again")
    dtype = torch.float16 if fp16 and dev.type == "cuda" else torch.float32
    # channels_last lets oneDNN and cuDNN pick their fastest convolutions.
    model = model.to(dtype=dtype, memory_format=torch.channels_last)
    reference = TorchRunner(model, dev, dtype)
    # On CUDA every batch shape gets its kernels picked once, so warm them all; on the CPU a few.
    sizes = range(1, max_batch_size + 1) if dev.type == "cuda" else (1, 8, max_batch_size)
    try:
        warm_up(reference, latent_dim=model.latent_dim, batch_sizes=(1,))
        runner, info = select_runner(
            backend,
            reference,
            threads,
            cache_key=sha256,
            cuda_graphs=cuda_graphs,
            max_batch_size=max_batch_size,
        )
        warm_up(runner, latent_dim=model.latent_dim, batch_sizes=tuple(sizes))
    except Exception as exc:  # e.g. a valid config for another input size: not servable here
        raise CheckpointError(f"{path}: the model does not run on 1x32x32 digits: {exc}") from exc
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return LoadedModel(
        metadata=metadata,
        checkpoint=path,
        sha256=sha256,
        config=model.config.to_dict(),
        latent_dim=model.latent_dim,
        device=str(dev),
        dtype=str(dtype).removeprefix("torch."),
        runner=runner,
        backend=info,
        prior=prior,
        artifact=ArtifactInfo("torch-checkpoint", str(path), sha256, f"torch {torch.__version__}"),
        model=model,
        typicality=typicality,
    )
