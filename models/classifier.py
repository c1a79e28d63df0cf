"""The MNIST digit classifier's network and its file format (trained by `training/classifier.py`).

Two copies ship, with two jobs that must stay apart: `models/mnist-classifier.pt` is the judge
that `vae-eval` scores samples with, and `models/mnist-digit-guide.pt` (another training run) is
what the service uses to accept or refuse candidate digits (`models/digit_guide.py`). The network
lives here, not in `training/`, because serving loads it and `app/` depends on `models/` only.

It reads exactly what the VAE writes: 32x32 grey levels in [0, 1], MNIST's 28x28 zero-padded by
2 px (`models.vae.pad_to_32`). A file is one plain dict, loaded with
`torch.load(weights_only=True)` like the VAE checkpoint::

    {"format": "mnist-classifier", "format_version": 1, "config": {...},
     "state": {...state_dict...}, "metadata": {test_accuracy, epochs, seed, ...}}
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import default_metadata

FORMAT_NAME = "mnist-classifier"
FORMAT_VERSION = 1
MODELS_DIR = Path(__file__).resolve().parent
DEFAULT_PATH = MODELS_DIR / "mnist-classifier.pt"  # the judge
GUIDE_PATH = MODELS_DIR / "mnist-digit-guide.pt"  # the service's acceptance step


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
