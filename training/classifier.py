"""A small MNIST classifier that judges the VAE's samples (`python -m training.classifier`).

Sample quality is measured the way image generators are: by a classifier that was trained on
real digits and never sees a sample during training (`training/sample_quality.py`). It reads
exactly what the VAE writes: 32x32 grey levels in [0, 1], MNIST's 28x28 zero-padded by 2 px
(`models.vae.pad_to_32`), so samples are scored without any resizing.

The network and its file format live in `models/classifier.py` (serving loads a second copy,
the digit guide); this module trains one and writes it.

Training is light on purpose (a few CPU minutes): random shifts of up to 2 px are the only
augmentation, so a digit drawn a little off-centre is still recognised.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from models.classifier import (
    DEFAULT_PATH,
    FORMAT_NAME,
    FORMAT_VERSION,
    ClassifierConfig,
    ClassifierError,
    DigitClassifier,
    classify,
    load_classifier,
    save_classifier,
)
from models.progress import add_progress_flag, progress_bar
from training.data import Split, dataset_sha256, load_split, to_model_input

__all__ = [
    "DEFAULT_PATH",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ClassifierConfig",
    "ClassifierError",
    "DigitClassifier",
    "accuracy",
    "classify",
    "load_classifier",
    "random_shift",
    "save_classifier",
    "train_classifier",
]


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
    progress: bool = False,
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
        batches = progress_bar(
            order.split(batch_size), desc=f"epoch {epoch}/{epochs}", unit="batch", enabled=progress
        )
        for idx in batches:
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
    add_progress_flag(p)
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
        train,
        args.epochs,
        args.batch_size,
        args.lr,
        args.max_shift,
        args.seed,
        config,
        progress=not args.no_progress,
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
