"""What every peer server shares: the checkpoint, one intra-op thread, and one digit as a PNG.

Each peer serves the same contract as the service: `POST /sample` with `{"n": 1}` (optionally
`"seed"`) answers a 32x32 greyscale PNG. The model runs eager (channels_last, as the service's own
torch backend) with one intra-op thread, as the service does on this machine: the peers differ in
how they serve, not in the model they run.
"""

from __future__ import annotations

import io
import os
import secrets

import numpy as np
import torch
from PIL import Image

from models.checkpoint import load_checkpoint
from models.vae import ConvVAE

DEVICE = os.environ.get("PEER_DEVICE", "cpu")  # peers_bench --device: cpu, or cuda for GPU rows


def load() -> ConvVAE:
    torch.set_num_threads(1)
    model, _ = load_checkpoint(os.environ.get("CHECKPOINT", "models/mnist-vae.pt"))
    return model.to(DEVICE, memory_format=torch.channels_last)


def latent(model: ConvVAE, request: dict) -> torch.Tensor:
    """Drawn on the CPU (the same numbers on any device), then moved to the model's device."""
    seed = request.get("seed")
    generator = torch.Generator().manual_seed(seed if seed is not None else secrets.randbits(63))
    z = torch.randn(int(request.get("n", 1)), model.latent_dim, generator=generator)
    return z.to(DEVICE)


def png(image: torch.Tensor) -> bytes:
    """[1, 32, 32] in [0, 1] -> 8-bit greyscale PNG."""
    pixels = (image[0].float().cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
