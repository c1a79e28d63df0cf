"""vae-train --tensorboard DIR: scalars and image grids per epoch, next to the usual files."""

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from training.train import main as train_main  # noqa: E402


def test_each_epoch_logs_scalars_samples_and_reconstructions(tmp_path, mnist_dir):
    args = "--preset tiny --epochs 2 --subset 400 --eval-limit 100 --device cpu --no-progress"
    out, logs = tmp_path / "run", tmp_path / "tb"
    argv = [*args.split(), "--data-dir", str(mnist_dir), "--out", str(out)]
    assert train_main([*argv, "--tensorboard", str(logs)]) == 0
    events = EventAccumulator(str(logs), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "val/neg_elbo", "val/kl", "val/active_units"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val/neg_elbo")] == [1, 2]
    assert {"samples", "reconstructions"} <= set(tags["images"])
    samples = events.Images("samples")
    assert [e.step for e in samples] == [1, 2] and samples[0].width > 32 * 8
    for name in ("metrics.csv", "loss_curve.png", "samples/epoch_002.png"):
        assert (out / name).is_file(), name
