"""`vae-train`: one readable loop from data to a served checkpoint.

10,000 of the 60,000 training digits are held out (a fixed, seeded split: `train_validation_split`)
and the model trains on the rest. batch -> forward -> ELBO -> backward -> step, then once per epoch:
evaluate the validation ELBO, log a line, save a sample grid, write `OUT/best.pt` when the
validation ELBO is the best so far, and write `OUT/checkpoint.pt` atomically (weights, optimizer,
RNG), so a crash costs at most one epoch and `--resume` carries on. At the end it writes
`OUT/model.pt` (the last epoch's weights and metrics) and a loss curve, and evaluates `best.pt` on
the test set: the one time a run touches it. `--export` copies `best.pt`, the selected model.

Settings come from flags, or from `--config run.toml` with flags overriding it; what the run used
is written to `OUT/config.toml` and into every checkpoint (`training/run_config.py`).

Ctrl-C or SIGTERM finishes the current step and saves `OUT/checkpoint.pt` as it stands: metadata
`epoch` counts the finished epochs and `step` the steps already taken in the next one (its
metrics are left empty: no epoch ended, so nothing was evaluated). `--resume` then carries on
from that very step, with the same batches and the same generators (the CPU's, the data's, and on
CUDA the device's), so the run ends with the weights it would have had without the interruption:
bit for bit on the CPU, and on CUDA with `--deterministic` (tests/gpu/test_cuda_training.py).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torchvision.utils import save_image
from tqdm import tqdm

from models.checkpoint import CheckpointError, model_from_payload, read_checkpoint, save_checkpoint
from models.runtime import resolve_device
from models.vae import PRESETS, ConvVAE, build_model, count_parameters
from training.data import (
    DATASETS,
    VALIDATION_SEED,
    VALIDATION_SIZE,
    DeviceBatches,
    dataset_sha256,
    load_split,
    provision,
    train_validation_split,
)
from training.evaluate import (
    active_units,
    binarized_test_set,
    elbo_terms,
    reconstruction_rows,
    sample_images,
)
from training.metrics_log import MetricsLog, plot_loss_curve
from training.objective import LOSSES
from training.reproducibility import deterministic
from training.run_config import ConfigError, config_argv, resolved_config, to_toml
from training.tensorboard_log import TensorBoardLog

log = logging.getLogger("vae-train")
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
BEST_NAME = "best.pt"
CONFIG_NAME = "config.toml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vae-train", description=__doc__.splitlines()[0])
    p.add_argument(
        "--config", type=Path, default=None, help="TOML file of settings; flags override it"
    )
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=100, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.999])
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
    p.add_argument(
        "--export", type=Path, default=None, help=f"also copy the selected model ({BEST_NAME}) here"
    )
    p.add_argument(
        "--val-size",
        type=int,
        default=VALIDATION_SIZE,
        help=f"training digits held out for validation (split seed {VALIDATION_SEED})",
    )
    p.add_argument(
        "--subset", type=int, default=None, help="train on the first N non-held-out digits only"
    )
    p.add_argument(
        "--eval-limit",
        type=int,
        default=None,
        help="evaluate on the first N validation digits (and N test digits at the end)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="cap --epochs to what fits in this many seconds, judged after epoch 1",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels only: the same seed gives bit-identical weights",
    )
    p.add_argument(
        "--tensorboard", type=Path, default=None, metavar="DIR", help="also log to TensorBoard"
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs only)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, after the `--config` file's settings when one is given (so flags win)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    first, _ = parser.parse_known_args(argv)
    if first.config is None:
        return parser.parse_args(argv)
    try:
        from_file = config_argv(first.config, parser)
    except ConfigError as exc:
        parser.error(str(exc))
    return parser.parse_args([*from_file, *argv])


class StopRequest:
    """Set by SIGINT/SIGTERM while in a `with` block; the loop finishes its step and saves
    before exiting. Leaving the block puts the previous handlers back."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

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

    def close(self) -> None:
        if self.world_size > 1:
            dist.destroy_process_group()


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


@dataclass
class Run:
    """Everything `set_up` builds for the epoch loop. `args` is only read; what a run decides
    for itself (the preset of a resumed checkpoint, the epochs a --time-budget allows) lives
    in its own fields."""

    args: argparse.Namespace
    ddp: Distributed
    device: torch.device
    model: ConvVAE
    step_fn: torch.nn.Module  # the model, wrapped in DDP and compiled where asked
    batches: DeviceBatches
    x_val: torch.Tensor  # binarized validation digits, judged every epoch
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: CosineSchedule
    preset: str
    epochs: int
    ckpt_path: Path
    dataset_digest: str
    metrics_log: MetricsLog | None
    tensorboard: TensorBoardLog | None
    history: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)  # the resolved settings, as saved
    start_epoch: int = 0
    start_step: int = 0  # > 0 when resuming an interrupted epoch ...
    start_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # ... its loss sums

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def best_val_neg_elbo(self) -> float:
        """The lowest validation -ELBO so far (a resumed run's history included)."""
        return min((row.get("val_neg_elbo", math.inf) for row in self.history), default=math.inf)


@dataclass
class EpochProgress:
    """One epoch so far: `step` steps taken (counting those before a resume), their loss sums,
    and what this process itself ran (for the throughput)."""

    step: int
    sums: torch.Tensor  # loss, reconstruction, KL
    steps_here: int = 0
    started: float = 0.0
    stopped: bool = False


def train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with deterministic(args.deterministic):
        return train_run(args)


def train_run(args: argparse.Namespace) -> int:
    run = set_up(args)
    run_started = time.perf_counter()
    epoch = run.start_epoch
    with StopRequest() as stop:
        while epoch < run.epochs:
            progress = train_epoch(run, epoch, stop)
            if progress.stopped:
                save_interrupted(run, epoch, progress)
                return 128 + (stop.signum or 0)
            end_epoch(run, epoch, progress)
            if args.time_budget and epoch == run.start_epoch:
                fit_time_budget(run, time.perf_counter() - run_started, progress)
            epoch += 1
    finish(run, epochs_done=epoch)
    return 0


def set_up(args: argparse.Namespace) -> Run:
    """Device and process group, model (new or resumed), data, optimizer and LR schedule."""
    wanted = resolve_device(args.device)
    ddp = Distributed.from_env(wanted.type)
    device = torch.device(f"cuda:{ddp.local_rank}") if wanted.type == "cuda" else wanted
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not args.deterministic
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / CHECKPOINT_NAME

    resume = _load_resume(ckpt_path) if args.resume else None
    model = model_from_payload(resume, str(ckpt_path)) if resume else build_model(args.preset)
    preset = resume["metadata"].get("preset", args.preset) if resume else args.preset
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    batches, x_val = _load_data(args, ddp, device)

    optimizer = torch.optim.Adam(
        model.parameters(), lr=args.lr, betas=tuple(args.betas), fused=device.type == "cuda"
    )
    schedule = CosineSchedule(args.epochs * len(batches), constant=args.lr_schedule == "constant")
    run = Run(
        args=args,
        ddp=ddp,
        device=device,
        model=model,
        step_fn=_step_fn(model, ddp, device, args.compile),
        batches=batches,
        x_val=x_val,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        schedule=schedule,
        preset=preset,
        epochs=args.epochs,
        ckpt_path=ckpt_path,
        dataset_digest=dataset_sha256(args.data_dir, args.dataset) if ddp.is_main else "",
        metrics_log=MetricsLog(args.out) if ddp.is_main else None,
        tensorboard=TensorBoardLog(args.tensorboard) if args.tensorboard and ddp.is_main else None,
        history=[],
        config=resolved_config(args),
    )
    if resume:
        _restore_train_state(run, resume["train_state"])
    if ddp.is_main:
        (args.out / CONFIG_NAME).write_text(to_toml(run.config))
        log.info(
            "%s preset: %d parameters on %s x%d; %d training images, %d validation, %d steps/epoch",
            preset,
            count_parameters(model),
            device,
            ddp.world_size,
            len(batches.images),
            len(x_val),
            len(batches),
        )
    return run


def _load_data(
    args: argparse.Namespace, ddp: Distributed, device: torch.device
) -> tuple[DeviceBatches, torch.Tensor]:
    """This rank's training batches, and the binarized validation digits that every epoch is
    judged on (held out of the training split: the test set is not looked at here)."""
    if ddp.is_main:  # one rank downloads or builds the files; the others wait, then read them
        provision(args.data_dir, args.dataset)
    ddp.barrier()
    full_train = load_split(args.data_dir, args.dataset, train=True)
    try:
        train_split, val_split = train_validation_split(full_train, args.val_size)
    except ValueError as exc:
        raise SystemExit(f"vae-train: --val-size: {exc}") from None
    if not len(val_split):
        raise SystemExit("vae-train: --val-size must hold out at least one digit to select on")
    if args.subset:
        train_split = train_split.subset(args.subset)
    batches = DeviceBatches(
        train_split,
        args.batch_size,
        device,
        dynamic_binarization=not args.grey_targets,
        seed=args.seed,
        rank=ddp.rank,
        world_size=ddp.world_size,
    )
    if len(batches) == 0:
        per_process = f" for each of {ddp.world_size} processes" if ddp.world_size > 1 else ""
        raise SystemExit(
            f"vae-train: {len(train_split)} training images make no full batch of "
            f"{args.batch_size}{per_process}; lower --batch-size or raise --subset"
        )
    x_val = binarized_test_set(val_split.images[: args.eval_limit or None], seed=0, device=device)
    return batches, x_val


def _step_fn(
    model: ConvVAE, ddp: Distributed, device: torch.device, compile_model: bool
) -> torch.nn.Module:
    net: torch.nn.Module = model
    if ddp.world_size > 1:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return torch.compile(net) if compile_model else net


def train_epoch(run: Run, epoch: int, stop: StopRequest) -> EpochProgress:
    """Steps through one epoch (from `run.start_step` when resuming into it); stops early, on
    every rank at the same step, when a signal asked to."""
    args, batches = run.args, run.batches
    resumed = epoch == run.start_epoch and run.start_step > 0
    first_step = run.start_step if resumed else 0
    sums = run.start_sums if resumed else [0.0, 0.0, 0.0]
    progress = EpochProgress(first_step, torch.tensor(sums, device=run.device))
    progress.started = time.perf_counter()
    batches.set_epoch(epoch, first_step)
    run.step_fn.train()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if run.cuda and not args.no_amp
        else contextlib.nullcontext()
    )
    loss_fn = LOSSES[args.loss]
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{run.epochs}",
        total=len(batches),
        initial=first_step,
        leave=False,
        disable=args.no_progress or not run.ddp.is_main,
    )
    for x in bar:
        if run.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        beta = kl_weight(args, epoch + progress.step / len(batches))
        with autocast:
            logits, mu, logvar = run.step_fn(x)
        terms = loss_fn(logits, x, mu, logvar, beta)
        run.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        if args.grad_clip:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        progress.sums += torch.stack(
            [terms.loss.detach(), terms.reconstruction.detach(), terms.kl.detach()]
        )
        if progress.step % 50 == 0:
            bar.set_postfix(loss=f"{terms.loss.item():.2f}", kl=f"{terms.kl.item():.2f}")
        progress.step += 1
        progress.steps_here += 1
        if run.ddp.any(stop.requested):
            progress.stopped = True
            break
    return progress


def end_epoch(run: Run, epoch: int, progress: EpochProgress) -> None:
    """Rank 0 evaluates on the validation digits, logs a line, saves a sample grid, `best.pt` when
    this epoch is the best so far, and the training checkpoint."""
    if run.ddp.is_main:
        seconds = time.perf_counter() - progress.started
        images = progress.steps_here * run.args.batch_size * run.ddp.world_size
        train_means = (progress.sums / progress.step).tolist()
        best_before = run.best_val_neg_elbo
        row = _epoch_row(run.model, run.x_val, epoch, train_means, seconds, images, run.optimizer)
        run.history.append(row)
        run.metrics_log.append(row)
        samples = sample_images(run.model)
        grid_path = run.args.out / "samples" / f"epoch_{epoch + 1:03d}.png"
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        save_image(samples, grid_path, nrow=8, pad_value=0.5)
        if run.tensorboard:
            run.tensorboard.log_epoch(row, samples, reconstruction_rows(run.model, run.x_val))
        improved = row["val_neg_elbo"] < best_before
        log.info(
            "epoch %d: val -ELBO %.2f%s  KL %.2f  active units %d  (%.0f img/s)",
            epoch + 1,
            row["val_neg_elbo"],
            " (best)" if improved else "",
            row["val_kl"],
            row["active_units"],
            row["images_per_second"],
        )
        if improved:
            save_checkpoint(run.args.out / BEST_NAME, run.model, _metadata(run, epoch + 1, row))
        save_checkpoint(
            run.ckpt_path,
            run.model,
            _metadata(run, epoch + 1, row, step=0),
            _train_state(run, epoch + 1, step=0, sums=[0.0, 0.0, 0.0]),
        )
    run.ddp.barrier()


def save_interrupted(run: Run, epoch: int, progress: EpochProgress) -> None:
    """The weights as they are, `epoch` epochs finished and `progress.step` steps into the next:
    `--resume` carries on from that step. Nothing is evaluated, so shutdown stays quick."""
    if run.ddp.is_main:
        step, sums = progress.step, progress.sums.tolist()
        save_checkpoint(
            run.ckpt_path,
            run.model,
            _metadata(run, epoch, {}, step=step),
            _train_state(run, epoch, step=step, sums=sums),
        )
        log.warning(
            "stopped after step %d/%d of epoch %d; %s holds it, --resume carries on from there",
            step,
            len(run.batches),
            epoch + 1,
            run.ckpt_path,
        )
    run.ddp.barrier()
    run.ddp.close()


def fit_time_budget(run: Run, seconds_so_far: float, first: EpochProgress) -> None:
    """After the first epoch of this process: cap the epochs to what fits in --time-budget."""
    per_epoch = seconds_so_far * len(run.batches) / max(first.steps_here, 1)
    run.epochs = epochs_within_budget(run.args, run.ddp, run.start_epoch, per_epoch)
    run.schedule.total_steps = run.epochs * len(run.batches)
    if run.ddp.is_main:
        log.info("time budget %.0f s: training for %d epochs", run.args.time_budget, run.epochs)


def finish(run: Run, epochs_done: int) -> None:
    """Rank 0 writes the last epoch's model and the loss curve, then evaluates the selected model
    (`best.pt`) on the test set, once, and stores the result in it (and in --export)."""
    if run.ddp.is_main:
        final = run.history[-1] if run.history else {}
        save_checkpoint(run.args.out / MODEL_NAME, run.model, _metadata(run, epochs_done, final))
        plot_loss_curve(run.history, run.args.out / "loss_curve.png")
        best_path = run.args.out / BEST_NAME
        if best_path.exists():
            best = score_on_test_set(run, best_path)
            if run.args.export:
                save_checkpoint(run.args.export, best["model"], best["metadata"])
            log.info(
                "selected epoch %d (val -ELBO %.2f): test -ELBO %.2f; wrote %s",
                best["metadata"]["epoch"],
                best["metadata"]["metrics"]["val_neg_elbo"],
                best["metadata"]["metrics"]["test_neg_elbo"],
                run.args.export or best_path,
            )
        if run.tensorboard:
            run.tensorboard.close()
    run.ddp.close()


def score_on_test_set(run: Run, best_path: Path) -> dict[str, Any]:
    """The test set's only use in a run: the -ELBO of the model the validation digits selected,
    on the first --eval-limit test digits, stored in `best.pt` as `test_*` metrics."""
    payload = read_checkpoint(best_path)
    model = model_from_payload(payload, str(best_path)).to(run.device).eval()
    test_images = load_split(run.args.data_dir, run.args.dataset, train=False).images
    x_test = binarized_test_set(test_images[: run.args.eval_limit or None], 0, run.device)
    test = elbo_terms(model, x_test)
    metadata = payload["metadata"]
    metadata["metrics"].update({f"test_{key}": value for key, value in test.items()})
    metadata["metrics"]["test_images"] = len(x_test)
    save_checkpoint(best_path, model, metadata)
    return {"model": model, "metadata": metadata}


def _epoch_row(
    model: ConvVAE,
    x_val: torch.Tensor,
    epoch: int,
    train_means: list[float],
    seconds: float,
    images: int,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    model.eval()
    val = elbo_terms(model, x_val)
    return {
        "epoch": epoch + 1,
        "train_loss": train_means[0],
        "train_reconstruction": train_means[1],
        "train_kl": train_means[2],
        "val_neg_elbo": val["neg_elbo"],
        "val_reconstruction": val["reconstruction"],
        "val_kl": val["kl"],
        "active_units": active_units(model, x_val),
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": round(seconds, 2),
        "images_per_second": images / max(seconds, 1e-9),
    }


def _metadata(
    run: Run, epochs_done: int, row: dict[str, Any], step: int | None = None
) -> dict[str, Any]:
    """`epoch`: finished epochs; `step` (training checkpoints only): steps into the next one."""
    training_args = {**vars(run.args), "preset": run.preset, "epochs": run.epochs}
    metadata = {
        "preset": run.preset,
        "training_args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in training_args.items()
        },
        "config": run.config,
        "epoch": epochs_done,
        "metrics": {k: v for k, v in row.items() if k not in ("lr", "seconds")},
        "dataset": {"name": run.args.dataset, "sha256": run.dataset_digest},
        "data_split": {
            "training_digits": len(run.batches.images),
            "validation_digits": run.args.val_size,
            "validation_seed": VALIDATION_SEED,
            "selected_on": f"val_neg_elbo over the first {len(run.x_val)} validation digits",
        },
    }
    if step is not None:
        metadata["step"] = step
    return metadata


def _train_state(run: Run, epochs_done: int, step: int, sums: list[float]) -> dict[str, Any]:
    return {
        "epoch": epochs_done,
        "step": step,
        "epoch_sums": sums,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        **_rng_states(run),
        "history": run.history,
    }


def _rng_states(run: Run) -> dict[str, Any]:
    """The generators a resumed run must carry on from: torch's CPU one, the data's (batch order
    and binarization), and on CUDA the training device's, which the forward pass draws its noise
    from."""
    states = {
        "torch_rng": torch.get_rng_state(),
        "data_rng": run.batches.generator.get_state().cpu(),
    }
    if run.cuda:
        states["cuda_rng"] = torch.cuda.get_rng_state(run.device)
    return states


def _restore_rng_states(run: Run, state: dict[str, Any]) -> None:
    """What `_rng_states` saved. A checkpoint without the CUDA generator (saved on the CPU, or
    before issue 28) resumes on CUDA with the generator as seeded: it trains on, but draws other
    noise than the uninterrupted run would have."""
    torch.set_rng_state(state["torch_rng"])
    run.batches.generator.set_state(state["data_rng"])
    if not run.cuda:
        return
    if "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)
    elif run.ddp.is_main:
        log.warning(
            "%s holds no CUDA generator state: this resumed run is not bit-identical to an "
            "uninterrupted one",
            run.ckpt_path,
        )


def _load_resume(path: Path) -> dict[str, Any]:
    try:
        payload = read_checkpoint(path)
    except CheckpointError as exc:
        raise SystemExit(f"vae-train: cannot resume: {exc}") from exc
    if "train_state" not in payload:
        raise SystemExit(f"vae-train: {path} holds no training state to resume from")
    return payload


def _restore_train_state(run: Run, state: dict[str, Any]) -> None:
    """Optimizer, schedule, RNGs and history as saved; the schedule re-planned for this run's
    --epochs. Checkpoints from before `step` was saved resume at an epoch's start."""
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    # The schedule object came back with the old run's length: plan it for this run's epochs.
    run.schedule.total_steps = max(1, run.epochs * len(run.batches))
    run.schedule.constant = run.args.lr_schedule == "constant"
    _restore_rng_states(run, state)
    run.history = state.get("history", [])
    run.start_epoch = int(state["epoch"])
    run.start_step = int(state.get("step", 0))
    run.start_sums = state.get("epoch_sums", run.start_sums)
    if run.start_step and run.epochs <= run.start_epoch:
        raise SystemExit(
            f"vae-train: {run.ckpt_path} stopped {run.start_step} steps into epoch "
            f"{run.start_epoch + 1}; resume with --epochs {run.start_epoch + 1} or more"
        )
    if run.ddp.world_size > 1:  # only rank 0's data RNG was saved: one stream per rank again
        seed = run.args.seed + run.ddp.rank + 1_000_003 * run.start_epoch
        run.batches.generator.manual_seed(seed)
    if run.ddp.is_main:
        log.info(
            "resuming from %s at epoch %d, step %d",
            run.ckpt_path,
            run.start_epoch + 1,
            run.start_step,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except KeyboardInterrupt:
        print("vae-train: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
