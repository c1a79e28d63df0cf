"""`vae-train --tensorboard DIR`: per-epoch scalars and image grids for TensorBoard.

Optional (`pip install 'mnist-vae[tensorboard]'`); metrics.csv, metrics.jsonl and the PNGs are
written either way, so nothing depends on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid

SCALARS = {  # metrics row key -> TensorBoard tag
    "train_loss": "train/loss",
    "train_reconstruction": "train/reconstruction",
    "train_kl": "train/kl",
    "val_neg_elbo": "val/neg_elbo",
    "val_reconstruction": "val/reconstruction",
    "val_kl": "val/kl",
    "active_units": "val/active_units",
    "lr": "train/lr",
    "images_per_second": "train/images_per_second",
}


class TensorBoardLog:
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise SystemExit(
                "vae-train: --tensorboard needs the tensorboard package: "
                "pip install 'mnist-vae[tensorboard]'"
            ) from exc
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_epoch(
        self, row: dict[str, Any], samples: torch.Tensor, reconstructions: torch.Tensor
    ) -> None:
        """One point per scalar at step = epoch; `samples` and `reconstructions` are image
        batches [N, 1, H, W] in [0, 1], shown as 8-wide grids."""
        epoch = row["epoch"]
        for key, tag in SCALARS.items():
            if key in row:
                self.writer.add_scalar(tag, row[key], epoch)
        self.writer.add_image("samples", make_grid(samples.cpu(), nrow=8, pad_value=0.5), epoch)
        grid = make_grid(reconstructions.cpu(), nrow=8, pad_value=0.5)
        self.writer.add_image("reconstructions", grid, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
