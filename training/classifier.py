"""A small MNIST classifier that judges the VAE's samples (`python -m training.classifier`).

Sample quality is measured the way image generators are: by a classifier that was trained on
real digits and never sees a sample during training (`training/sample_quality.py`). It reads
exactly what the VAE writes: 32x32 grey levels in [0, 1], MNIST's 28x28 zero-padded by 2 px
(`models.vae.pad_to_32`), so samples are scored without any resizing.

The weights ship at `models/mnist-classifier.pt` as one plain dict, loaded with
`torch.load(weights_only=True)` like the VAE checkpoint::

    {"format": "mnist-classifier", "format_version": 1, "config": {...},
     "state": {...state_dict...}, "metadata": {test_accuracy, epochs, seed, ...}}

Training is light on purpose (a few CPU minutes): random shifts of up to 2 px are the only
augmentation, so a digit drawn a little off-centre is still recognised.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import default_metadata
from training.data import Split, dataset_sha256, load_split, to_model_input

FORMAT_NAME = "mnist-classifier"
FORMAT_VERSION = 1
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "models" / "mnist-classifier.pt"


class ClassifierError(Exception):
    """The classifier file cannot be used; the message is fit for a log line."""


@dataclass(frozen=True)
class ClassifierConfig:
    """Shape of the network: three conv stages (32 -> 16 -> 8 -> 4 px), then one hidden layer
    whose activations are the feature space of the Frechet distance."""

    channels: tuple[int, ...] = (16, 32, 64)
    hidden: int = 128
    dropout: float = 0.3

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ClassifierConfig fields: {sorted(unknown)}")
        return cls(**{**data, "channels": tuple(int(c) for c in data.get("channels", ()))})


class DigitClassifier(nn.Module):
    """x [N, 1, 32, 32] in [0, 1] -> logits [N, 10]; `features` gives the penultimate layer."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        cfg = self.config
        chans = [1, *cfg.channels]
        stages: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            stages += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        side = 32 // 2 ** len(cfg.channels)
        self.body = nn.Sequential(*stages, nn.Flatten())
        self.hidden = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.channels[-1] * side * side, cfg.hidden),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden layer's activations [N, hidden]: what the Frechet distance compares."""
        return self.hidden(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.inference_mode()
def classify(
    model: DigitClassifier, images: torch.Tensor, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [N, 10] and penultimate features [N, hidden] (float32, on the CPU)."""
    model.eval()
    device = next(model.parameters()).device
    probs, feats = [], []
    for chunk in images.split(batch_size):
        f = model.features(chunk.to(device, torch.float32))
        probs.append(F.softmax(model.head(f), dim=1).float().cpu())
        feats.append(f.float().cpu())
    return torch.cat(probs), torch.cat(feats)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Moves each image by its own integer offset in [-max_shift, max_shift]^2, zero-filling."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1), generator=generator)
    rows = (dy + torch.arange(h)).to(x.device)  # [n, h]
    cols = (dx + torch.arange(w)).to(x.device)  # [n, w]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@torch.inference_mode()
def accuracy(model: DigitClassifier, split: Split) -> float:
    probs, _ = classify(model, to_model_input(split.images))
    return (probs.argmax(1) == split.labels).float().mean().item()


def train_classifier(
    train: Split,
    epochs: int = 6,
    batch_size: int = 128,
    lr: float = 3e-3,
    max_shift: int = 2,
    seed: int = 0,
    config: ClassifierConfig | None = None,
    log=print,
) -> DigitClassifier:
    """AdamW with a one-cycle schedule on shifted real digits; returns the model in eval mode."""
    torch.manual_seed(seed)
    model = DigitClassifier(config)
    generator = torch.Generator().manual_seed(seed)
    x_all = to_model_input(train.images)
    y_all = train.labels
    steps_per_epoch = math.ceil(len(y_all) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch
    )
    for epoch in range(1, epochs + 1):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(y_all), generator=generator)
        loss_sum = 0.0
        for idx in order.split(batch_size):
            x = random_shift(x_all[idx], max_shift, generator)
            loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(idx)
        log(
            f"epoch {epoch}/{epochs}: loss {loss_sum / len(y_all):.4f} "
            f"({time.perf_counter() - started:.0f} s)"
        )
    return model.eval()


def save_classifier(path: str | os.PathLike, model: DigitClassifier, metadata: dict) -> Path:
    """Atomic write (temp file, then rename) of the plain-dict format described above."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": {**default_metadata(), **metadata},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; weights are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_classifier(
    path: str | os.PathLike = DEFAULT_PATH, device: str | torch.device = "cpu"
) -> tuple[DigitClassifier, dict[str, Any]]:
    """Returns (classifier in eval mode on `device`, metadata); refuses pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(
            f"classifier not found: {path} (train one: python -m training.classifier)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ClassifierError(f"{path} is not a classifier file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise ClassifierError(f"{path} is not a {FORMAT_NAME} file")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ClassifierError(
            f"{path} has format version {payload.get('format_version')!r}; "
            f"this build reads version {FORMAT_VERSION}"
        )
    try:
        model = DigitClassifier(ClassifierConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["state"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ClassifierError(f"{path}: weights do not match its config: {exc}") from exc
    return model.to(device).eval(), payload.get("metadata", {})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vae-train-classifier", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=DEFAULT_PATH)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-shift", type=int, default=2, help="augmentation: shifts in pixels")
    p.add_argument("--subset", type=int, default=None, help="train on the first N digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=int, nargs="+", default=list(ClassifierConfig.channels))
    p.add_argument("--hidden", type=int, default=ClassifierConfig.hidden)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    train = load_split(args.data_dir, "mnist", train=True)
    test = load_split(args.data_dir, "mnist", train=False)
    if args.subset:
        train = train.subset(args.subset)
    config = ClassifierConfig(channels=tuple(args.channels), hidden=args.hidden)
    started = time.perf_counter()
    model = train_classifier(
        train, args.epochs, args.batch_size, args.lr, args.max_shift, args.seed, config
    )
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(model, test)
    print(f"test accuracy {test_accuracy:.4f} on {len(test)} MNIST test digits")
    metadata = {
        "test_accuracy": round(test_accuracy, 4),
        "test_images": len(test),
        "train_images": len(train),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "max_shift": args.max_shift,
        "seed": args.seed,
        "train_seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "input": "32x32 grey levels in [0, 1]: MNIST zero-padded by models.vae.pad_to_32",
        "dataset_sha256": dataset_sha256(args.data_dir, "mnist"),
    }
    save_classifier(args.out, model, metadata)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
