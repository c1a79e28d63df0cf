"""Training throughput, side by side in one run: the notebook's input pipeline vs ours.

    python bench/train_bench.py [--device auto|cpu|cuda] [--steps 50] [--json out.json]

Rows (images/s over timed optimiser steps, after warm-up):
- notebook: torchvision MNIST through a DataLoader with a per-image Resize(32) + ToTensor,
  the seed network and the seed loss, as the lecture notebook did it;
- seed: the same network fed by `DeviceBatches` (one uint8 tensor on the device, padded and
  binarized per batch) with the Bernoulli ELBO;
- default: the shipped architecture on the same pipeline (bf16 autocast + channels_last on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.runtime import resolve_device  # noqa: E402
from models.vae import build_model  # noqa: E402
from training.data import DeviceBatches, load_split, provision  # noqa: E402
from training.objective import elbo_loss, seed_mse_loss  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, batches, loss_fn, device, steps, warmup, fast) -> float:
    """Images per second over `steps` optimiser steps after `warmup` untimed ones."""
    model.to(device).train()
    cuda = device.type == "cuda"
    if cuda and fast:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if cuda and fast else contextlib.nullcontext()
    )
    stream = itertools.cycle(batches)
    images, started = 0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            started = time.perf_counter()
        x = next(stream)
        if isinstance(x, list | tuple):  # DataLoader yields (images, labels)
            x = x[0]
        x = x.to(device, non_blocking=True)
        if cuda and fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits, mu, logvar = model(x)
        loss = loss_fn(logits, x, mu, logvar).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            images += x.shape[0]
    _sync(device)
    return images / (time.perf_counter() - started)


def _cpu_name() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads"
    return platform.processor() or "cpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    provision(args.data_dir)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()

    notebook_set = datasets.MNIST(
        str(args.data_dir),
        train=True,
        download=False,
        transform=transforms.Compose([transforms.Resize(32), transforms.ToTensor()]),
    )
    notebook_loader = DataLoader(notebook_set, batch_size=args.batch_size, shuffle=True)
    ours = DeviceBatches(load_split(args.data_dir), args.batch_size, device)

    rows = [
        ("notebook (DataLoader + Resize, seed net)", "seed", notebook_loader, seed_mse_loss, False),
        ("seed net, DeviceBatches + ELBO", "seed", ours, elbo_loss, True),
        ("default net, DeviceBatches + ELBO", "default", ours, elbo_loss, True),
    ]
    results = {}
    for label, preset, batches, loss_fn, fast in rows:
        rate = time_steps(
            build_model(preset), batches, loss_fn, device, args.steps, args.warmup, fast
        )
        results[label] = rate
    baseline = results[rows[0][0]]
    print(
        f"device: {device} ({name}), torch {torch.__version__}, "
        f"batch {args.batch_size}, {args.steps} timed steps"
    )
    print(f"| {'pipeline':<42} | {'images/s':>10} | {'vs notebook':>11} |")
    print(f"|{'-' * 44}|{'-' * 12}|{'-' * 13}|")
    for label, rate in results.items():
        print(f"| {label:<42} | {rate:>10.0f} | {rate / baseline:>10.2f}x |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": str(device),
                    "device_name": name,
                    "torch": str(torch.__version__),
                    "images_per_second": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
