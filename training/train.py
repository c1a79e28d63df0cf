"""`vae-train`: one readable loop from data to a served checkpoint.

batch -> forward -> ELBO -> backward -> step, then once per epoch: evaluate on the test set, log a
line, save a sample grid and write `OUT/checkpoint.pt` atomically (weights, optimizer, RNG), so
Ctrl-C, SIGTERM or a crash costs at most one epoch and `--resume` carries on. At the end it writes
`OUT/model.pt` (weights and metrics only: what the server loads) and a loss curve.

Multi-GPU: `torchrun --nproc_per_node=N -m training ...` runs DistributedDataParallel (NCCL on
CUDA, gloo on the CPU); rank 0 evaluates and writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.checkpoint import CheckpointError, model_from_payload, read_checkpoint, save_checkpoint
from models.runtime import resolve_device
from models.vae import PRESETS, ConvVAE, build_model, count_parameters
from training.data import DATASETS, DeviceBatches, dataset_sha256, load_split, provision
from training.evaluate import active_units, binarized_test_set, elbo_terms, save_sample_grid
from training.metrics_log import MetricsLog, plot_loss_curve
from training.objective import LOSSES

log = logging.getLogger("vae-train")
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vae-train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=100, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999))
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument(
        "--loss",
        choices=sorted(LOSSES),
        default="bernoulli",
        help="seed-mse is the lecture notebook's broken loss, for comparison only",
    )
    p.add_argument(
        "--grey-targets",
        action="store_true",
        help="train on grey levels instead of dynamically binarized pixels",
    )
    p.add_argument("--beta", type=float, default=1.0, help="KL weight after warm-up")
    p.add_argument(
        "--kl-warmup-epochs",
        type=float,
        default=0.0,
        help="ramp the KL weight linearly from 0 to --beta over this many epochs",
    )
    p.add_argument(
        "--grad-clip",
        type=float,
        default=200.0,
        help="clip the gradient norm (0: off); a guard against rare KL blow-ups",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", type=Path, default=Path("runs/default"))
    p.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT_NAME}")
    p.add_argument("--export", type=Path, default=None, help="also copy the final model here")
    p.add_argument("--subset", type=int, default=None, help="train on the first N images only")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on N test images")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="cap --epochs to what fits in this many seconds, judged after epoch 1",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs only)")
    return p.parse_args(argv)


class StopRequest:
    """Set by SIGINT/SIGTERM; the loop finishes its step and saves before exiting."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("signal %d: finishing this step, saving a checkpoint, then exiting", signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where collective tensors live: NCCL only moves CUDA tensors."""
        return (
            torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        )

    @classmethod
    def from_env(cls, device_type: str) -> Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        return cls(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")), backend)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one: all ranks stop at the same step."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def kl_weight(args: argparse.Namespace, progress_epochs: float) -> float:
    if args.kl_warmup_epochs <= 0:
        return args.beta
    return args.beta * min(1.0, progress_epochs / args.kl_warmup_epochs)


class CosineSchedule:
    """LR multiplier: cosine from 1 down to `floor` over `total_steps`. An object rather than a
    lambda so that a --time-budget can shorten the run after the first epoch."""

    def __init__(self, total_steps: int, constant: bool = False, floor: float = 0.02) -> None:
        self.total_steps = max(1, total_steps)
        self.constant = constant
        self.floor = floor

    def __call__(self, step: int) -> float:
        if self.constant:
            return 1.0
        progress = min(step, self.total_steps) / self.total_steps
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def epochs_within_budget(
    args: argparse.Namespace, ddp: Distributed, first_epoch: int, seconds_per_epoch: float
) -> int:
    """How many epochs fit in --time-budget, judged from the first one (same on every rank)."""
    fit = first_epoch + max(1, int(args.time_budget / max(seconds_per_epoch, 1e-6)))
    epochs = torch.tensor([min(args.epochs, fit)])
    if ddp.world_size > 1:
        dist.broadcast(epochs, src=0)
    return int(epochs.item())


def train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    wanted = resolve_device(args.device)
    ddp = Distributed.from_env(wanted.type)
    device = torch.device(f"cuda:{ddp.local_rank}") if wanted.type == "cuda" else wanted
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / CHECKPOINT_NAME

    resume = _load_resume(ckpt_path) if args.resume else None
    model = model_from_payload(resume, str(ckpt_path)) if resume else build_model(args.preset)
    if resume:
        args.preset = resume["metadata"].get("preset", args.preset)
    model.to(device)
    use_cuda_tricks = device.type == "cuda"
    if use_cuda_tricks:
        model.to(memory_format=torch.channels_last)

    if ddp.is_main:  # one rank downloads or builds the files; the others wait, then read them
        provision(args.data_dir, args.dataset)
    ddp.barrier()
    train_split = load_split(args.data_dir, args.dataset, train=True)
    test_split = load_split(args.data_dir, args.dataset, train=False)
    if args.subset:
        train_split = train_split.subset(args.subset)
    batches = DeviceBatches(
        train_split,
        args.batch_size,
        device,
        dynamic_binarization=not args.grey_targets,
        seed=args.seed + ddp.rank,
        rank=ddp.rank,
        world_size=ddp.world_size,
    )
    test_images = test_split.images[: args.eval_limit] if args.eval_limit else test_split.images
    x_test = binarized_test_set(test_images, seed=0, device=device)

    optimizer = torch.optim.Adam(
        model.parameters(), lr=args.lr, betas=tuple(args.betas), fused=use_cuda_tricks
    )
    schedule = CosineSchedule(args.epochs * len(batches), constant=args.lr_schedule == "constant")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start_epoch, history = 0, []
    if resume:
        start_epoch = _restore_train_state(resume["train_state"], optimizer, scheduler, batches)
        history = resume["train_state"].get("history", [])
        # The schedule object came back with the old run's length: plan it for this run's epochs.
        schedule.total_steps = max(1, args.epochs * len(batches))
        schedule.constant = args.lr_schedule == "constant"
        if ddp.world_size > 1:  # only rank 0's data RNG was saved: one stream per rank again
            batches.generator.manual_seed(args.seed + ddp.rank + 1_000_003 * start_epoch)
        log.info("resuming from %s at epoch %d", ckpt_path, start_epoch + 1)

    net: torch.nn.Module = model
    if ddp.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if use_cuda_tricks else None)
    step_fn = torch.compile(net) if args.compile else net
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if use_cuda_tricks and not args.no_amp
        else contextlib.nullcontext()
    )
    loss_fn = LOSSES[args.loss]
    metrics_log = MetricsLog(args.out) if ddp.is_main else None
    dataset_digest = dataset_sha256(args.data_dir, args.dataset) if ddp.is_main else ""
    if ddp.is_main:
        log.info(
            "%s preset: %d parameters on %s x%d; %d images, %d steps/epoch",
            args.preset,
            count_parameters(model),
            device,
            ddp.world_size,
            len(train_split),
            len(batches),
        )

    stop = StopRequest()
    stop.install()
    epoch = start_epoch
    run_started = time.perf_counter()
    while epoch < args.epochs:
        batches.set_epoch(epoch)
        net.train()
        started = time.perf_counter()
        sums = torch.zeros(3, device=device)
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            leave=False,
            disable=args.no_progress or not ddp.is_main,
        )
        steps = 0
        for step, x in enumerate(bar):
            if use_cuda_tricks:
                x = x.contiguous(memory_format=torch.channels_last)
            beta = kl_weight(args, epoch + step / len(batches))
            with autocast:
                logits, mu, logvar = step_fn(x)
            terms = loss_fn(logits, x, mu, logvar, beta)
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            if args.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            scheduler.step()
            sums += torch.stack(
                [terms.loss.detach(), terms.reconstruction.detach(), terms.kl.detach()]
            )
            steps += 1
            if step % 50 == 0:
                bar.set_postfix(loss=f"{terms.loss.item():.2f}", kl=f"{terms.kl.item():.2f}")
            stopping = ddp.any(stop.requested)
            if stopping:
                break
        completed = not stopping
        if not completed:
            epoch -= 1  # the interrupted epoch is redone on --resume
        if ddp.is_main:
            train_means = (sums / max(steps, 1)).tolist()
            row = _epoch_row(
                model,
                x_test,
                epoch,
                train_means,
                time.perf_counter() - started,
                steps * args.batch_size * ddp.world_size,
                optimizer,
            )
            if completed:
                history.append(row)
                metrics_log.append(row)
                save_sample_grid(model, args.out / "samples" / f"epoch_{epoch + 1:03d}.png")
                log.info(
                    "epoch %d: test -ELBO %.2f  KL %.2f  active units %d  (%.0f img/s)",
                    epoch + 1,
                    row["test_neg_elbo"],
                    row["test_kl"],
                    row["active_units"],
                    row["images_per_second"],
                )
            save_checkpoint(
                ckpt_path,
                model,
                _metadata(args, epoch, row, dataset_digest),
                _train_state(epoch, optimizer, scheduler, batches, history),
            )
        ddp.barrier()
        if stopping:
            if ddp.is_main:
                log.warning("stopped; checkpoint %s holds epoch %d", ckpt_path, epoch + 1)
            return 128 + (stop.signum or 0)
        if args.time_budget and epoch == start_epoch:
            args.epochs = epochs_within_budget(
                args, ddp, start_epoch, time.perf_counter() - run_started
            )
            schedule.total_steps = args.epochs * len(batches)
            if ddp.is_main:
                log.info(
                    "time budget %.0f s: training for %d epochs", args.time_budget, args.epochs
                )
        epoch += 1
    epoch -= 1  # the last completed epoch, for the metadata

    if ddp.is_main:
        final = history[-1] if history else {}
        model_path = save_checkpoint(
            args.out / MODEL_NAME, model, _metadata(args, epoch, final, dataset_digest)
        )
        if args.export:
            save_checkpoint(args.export, model, _metadata(args, epoch, final, dataset_digest))
        plot_loss_curve(history, args.out / "loss_curve.png")
        log.info("wrote %s", args.export or model_path)
    if ddp.world_size > 1:
        dist.destroy_process_group()
    return 0


def _epoch_row(
    model: ConvVAE,
    x_test: torch.Tensor,
    epoch: int,
    train_means: list[float],
    seconds: float,
    images: int,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    model.eval()
    test = elbo_terms(model, x_test)
    return {
        "epoch": epoch + 1,
        "train_loss": train_means[0],
        "train_reconstruction": train_means[1],
        "train_kl": train_means[2],
        "test_neg_elbo": test["neg_elbo"],
        "test_reconstruction": test["reconstruction"],
        "test_kl": test["kl"],
        "active_units": active_units(model, x_test),
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": round(seconds, 2),
        "images_per_second": images / max(seconds, 1e-9),
    }


def _metadata(
    args: argparse.Namespace, epoch: int, row: dict[str, Any], dataset_digest: str
) -> dict[str, Any]:
    return {
        "preset": args.preset,
        "training_args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "epoch": epoch + 1,
        "metrics": {k: v for k, v in row.items() if k not in ("lr", "seconds")},
        "dataset": {"name": args.dataset, "sha256": dataset_digest},
    }


def _train_state(
    epoch: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: DeviceBatches,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "epoch": epoch + 1,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "data_rng": batches.generator.get_state().cpu(),
        "history": history,
    }


def _load_resume(path: Path) -> dict[str, Any]:
    try:
        payload = read_checkpoint(path)
    except CheckpointError as exc:
        raise SystemExit(f"vae-train: cannot resume: {exc}") from exc
    if "train_state" not in payload:
        raise SystemExit(f"vae-train: {path} holds no training state to resume from")
    return payload


def _restore_train_state(
    state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any, batches: DeviceBatches
) -> int:
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    batches.generator.set_state(state["data_rng"])
    return int(state["epoch"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except KeyboardInterrupt:
        print("vae-train: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
