"""The model on its device, behind micro-batchers that merge concurrent requests.

The seam follows LitServe: `load_model` is setup (load, pick and check the backend, warm up), the
`run_*` functions are `predict` over one batch, and `MicroBatcher` (`app/batching.py`) owns
queueing, batching, timeouts and the inference thread. Nothing here knows about HTTP. A reload
builds and warms a new `LoadedModel` on the side and swaps one reference; each request holds the
model it started with, so requests in flight finish on the old one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from app import metrics
from app.admission import DecodeGate, InferenceGate
from app.backends import BackendInfo, Runner, TorchRunner, select_runner
from app.batching import MicroBatcher
from app.config import DEFAULT_DIGIT_GUIDE, Settings
from app.errors import CheckpointRejected, InvalidInput, NotReady
from models.checkpoint import CheckpointError, file_sha256, load_checkpoint_and_prior
from models.classifier import ClassifierError
from models.digit_guide import (
    DigitGuide,
    choose,
    draw_candidates,
    first_candidates,
    load_guide,
    refused,
    retry_latents,
)
from models.prior import LatentPrior, MixturePrior, StandardNormalPrior
from models.runtime import resolve_device
from models.vae import ConvVAE

log = logging.getLogger("app.engine")

__all__ = ["Engine", "LoadedModel", "MicroBatcher", "inference_threads", "load_model"]


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One checkpoint, loaded and warmed; immutable, so it can be shared across threads."""

    model: ConvVAE
    metadata: dict[str, Any]
    checkpoint: Path
    sha256: str
    device: torch.device
    dtype: torch.dtype
    runner: Runner  # where the forward passes run; checked against eager at load
    backend: BackendInfo
    prior: LatentPrior  # the checkpoint's own; N(0, I) when it carries none
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim


def load_model(
    path: str | Path,
    device: str = "auto",
    fp16: bool = False,
    max_batch_size: int = 64,
    *,
    backend: str = "auto",
    threads: int = 1,
    cuda_graphs: bool = True,
) -> LoadedModel:
    """Loads, moves and warms a checkpoint, and picks its backend (`app.backends.select_runner`:
    the requested one if it matches eager, else eager torch); raises `CheckpointError` with a
    one-line reason."""
    dev = resolve_device(device)
    before = _file_identity(path)
    model, metadata, prior = load_checkpoint_and_prior(path, device=dev)
    sha256 = file_sha256(path)
    if _file_identity(path) != before:  # replaced meanwhile: the hash might not be these weights
        raise CheckpointError(f"{path} changed while it was being loaded; try again")
    dtype = torch.float16 if fp16 and dev.type == "cuda" else torch.float32
    # channels_last lets oneDNN/cuDNN pick their fastest convolutions: 1.45x per batch on the CPU.
    model = model.to(dtype=dtype, memory_format=torch.channels_last)
    reference = TorchRunner(model, dev, dtype)
    try:
        reference.decode(torch.zeros(1, model.latent_dim))
        reference.encode(torch.zeros(1, 1, 32, 32))
    except Exception as exc:  # e.g. a valid config for another input size: not servable here
        raise CheckpointError(f"{path}: the model does not run on 1x32x32 digits: {exc}") from exc
    runner, info = select_runner(
        backend,
        reference,
        threads,
        cache_key=sha256,
        cuda_graphs=cuda_graphs,
        max_batch_size=max_batch_size,
    )
    loaded = LoadedModel(model, metadata, Path(path), sha256, dev, dtype, runner, info, prior)
    # On CUDA every batch shape gets its kernels picked once, so warm them all; on the CPU a few.
    sizes = range(1, max_batch_size + 1) if dev.type == "cuda" else (1, 8, max_batch_size)
    try:
        warm_up(loaded, tuple(sizes))
    except Exception as exc:  # e.g. a valid config for another input size: not servable here
        raise CheckpointError(f"{path}: the model does not run on 1x32x32 digits: {exc}") from exc
    return loaded


def sample_prior_name(m: LoadedModel, prior: str, digits: list[int] | None) -> str:
    """What a /sample request draws from, as the response names it."""
    return "standard" if prior == "standard" and digits is None else m.prior.name


def check_digits(m: LoadedModel, prior: str, digits: list[int] | None) -> None:
    """Refuses, with a 422 that says why, digits this checkpoint's prior cannot draw."""
    if digits is None:
        return
    if prior == "standard":
        raise InvalidInput('"prior": "standard" is N(0, I), which cannot choose a digit')
    known = m.prior.digits() if isinstance(m.prior, MixturePrior) else []
    if not known:
        raise InvalidInput(
            "this checkpoint's prior has no per-digit mixtures, so it cannot draw a chosen "
            "digit (fit one with vae-fit-prior)"
        )
    missing = sorted(set(digits) - set(known))
    if missing:
        raise InvalidInput(f"this checkpoint's prior cannot draw digit(s) {missing}")


def draw_digits(
    m: LoadedModel, digits: list[int], generator: torch.Generator, temperature: float
) -> torch.Tensor:
    assert isinstance(m.prior, MixturePrior)  # check_digits ran first
    return m.prior.sample_digits(digits, generator, temperature)


def load_digit_guide(settings: Settings) -> DigitGuide | None:
    """The guide for chosen digits, or None: `VAE_DIGIT_GUIDE` empty, or the default file absent
    (logged once). A path that was set on purpose and cannot be loaded stops the start-up."""
    path = settings.digit_guide
    if not path:
        return None
    if path == DEFAULT_DIGIT_GUIDE and not Path(path).is_file():
        log.warning("digit guide %s not found: chosen digits are drawn unguided", path)
        return None
    try:
        guide = load_guide(path, settings.digit_candidates)
    except ClassifierError as exc:
        raise CheckpointError(f"VAE_DIGIT_GUIDE: {exc}") from exc
    log.info("chosen digits: up to %d candidates each, accepted by %s", guide.candidates, path)
    return guide


def _file_identity(path: str | Path) -> tuple[int, int, int] | None:
    """Inode, size and mtime: an atomic replace (os.replace) always changes the inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def inference_threads(requested: int = 0) -> int:
    """0 means: leave one core to the event loop (HTTP, JSON, PNG) and use up to 4 for torch.

    On a small machine torch's default (every core) makes its threads spin against the event loop
    and against each other; one inference thread was 5-30x faster per batch on 2 cores.
    """
    if requested > 0:
        return requested
    return max(1, min(4, len(os.sched_getaffinity(0)) - 1))


def inline_lone_batches(setting: str, device: str) -> bool:
    """Whether a lone one-row batch runs on the event loop (`MicroBatcher(inline_lone=...)`).

    With one core (a `taskset`, a one-CPU container) the inference thread cannot run beside the
    loop anyway, and handing a lone request to it and back cost 0.1 ms of its 1.3 ms. With more
    cores the thread keeps the loop free to read the next requests while the model runs; on CUDA
    the loop would wait for the GPU.
    """
    if setting != "auto":
        return setting == "on"
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return on_cpu and len(os.sched_getaffinity(0)) == 1


def warm_up(m: LoadedModel, batch_sizes: tuple[int, ...] = (1, 8, 64)) -> None:
    """Runs every batch function once per size so the first real request pays no set-up cost."""
    for n in batch_sizes:
        x = torch.zeros(n, 1, 32, 32)
        run_reconstruct(m, x)
        run_encode(m, x)
        run_decode(m, torch.zeros(n, m.latent_dim))
    if m.device.type == "cuda":
        torch.cuda.synchronize(m.device)


def run_encode(m: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N,1,32,32] -> (mu, logvar), each [N, latent_dim] float32 on the CPU."""
    return m.runner.encode(x)


def run_decode(m: LoadedModel, z: torch.Tensor) -> torch.Tensor:
    """z [N, latent_dim] -> images [N,1,32,32] in [0,1], float32 on the CPU."""
    return m.runner.decode(z)


def run_reconstruct(m: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x -> (mu, logvar, reconstruction at the posterior mean, -ELBO at z=mu in nats)."""
    return m.runner.reconstruct(x)


class Engine:
    """The served model, its three batched operations (encode, decode, reconstruct) and the
    latent-space operations built on them (sampling, interpolation)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._current: LoadedModel | None = None
        self.guide: DigitGuide | None = None  # set by start(); None: chosen digits unguided
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.inline_lone = inline_lone_batches(settings.inline_lone_batches, settings.device)
        self._reload_lock = asyncio.Lock()
        knobs = dict(
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            queue_size=settings.queue_size,
            timeout_s=settings.request_timeout_s,
            inline_lone=self.inline_lone,
        )
        # Learns each operation's seconds per row, and answers 503 up front when the work
        # already queued would outlast the request timeout (rather than a 504 at its end).
        self.admission = gate = InferenceGate(settings.request_timeout_s)
        self.encoder = MicroBatcher(
            "encode", gate.timed("encode", run_encode), self._executor, **knobs
        )
        self.decoder = MicroBatcher(
            "decode", gate.timed("decode", run_decode), self._executor, lone_at_once=True, **knobs
        )
        self.reconstructor = MicroBatcher(
            "reconstruct", gate.timed("reconstruct", run_reconstruct), self._executor, **knobs
        )

    def batch_uploads_with(self, gate: DecodeGate) -> None:
        """Lets encode and reconstruct batches wait (up to `VAE_UPLOAD_BATCH_WAIT_MS`) for uploads
        that `gate` is still decoding, instead of running without them.

        Uploads reach these batchers one by one as their decodes finish, so without this a busy
        `/encode` ran batches of about two rows, each paying a forward pass's fixed cost: at c=64
        on one core, 572 req/s against 722 with a 5 ms wait. An idle gate means nothing is on its
        way, so a lone upload (or an OIP tensor, which is not decoded) never waits.
        """
        for batcher in (self.encoder, self.reconstructor):
            batcher.more_coming = lambda: gate.busy
            batcher.more_coming_wait_s = self.settings.upload_batch_wait_ms / 1000.0

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> LoadedModel:
        if self._current is None:
            raise NotReady()
        return self._current

    async def start(self) -> LoadedModel:
        """Loads and warms the configured checkpoint off the event loop, then starts batching."""
        s = self.settings
        torch.set_num_threads(inference_threads(s.torch_threads))
        self.guide = await asyncio.to_thread(load_digit_guide, s)
        loaded = await asyncio.to_thread(self._load, s.checkpoint)
        self._install(loaded)
        for batcher in (self.encoder, self.decoder, self.reconstructor):
            batcher.start()
        return loaded

    async def stop(self) -> None:
        for batcher in (self.encoder, self.decoder, self.reconstructor):
            await batcher.stop()
        self._executor.shutdown(wait=True)

    async def reload(self, path: Path | None = None) -> LoadedModel:
        """Loads `path` beside the serving model and swaps.

        A checkpoint that cannot be served changes nothing: the caller gets `CheckpointRejected`
        (with the one-line reason) while the old model keeps serving.
        """
        s = self.settings
        async with self._reload_lock:
            try:
                loaded = await asyncio.to_thread(self._load, path or s.checkpoint)
            except CheckpointError as exc:
                raise CheckpointRejected(
                    f"reload refused, still serving the old model: {exc}"
                ) from None
            self._install(loaded)
        return loaded

    def _load(self, path: Path) -> LoadedModel:
        s = self.settings
        return load_model(
            path,
            s.device,
            s.fp16,
            s.max_batch_size,
            backend=s.backend,
            threads=inference_threads(s.torch_threads),
            cuda_graphs=s.cuda_graphs,
        )

    def _install(self, loaded: LoadedModel) -> None:
        self._current = loaded
        metrics.set_model_info(loaded)
        log.info(
            "serving %s (sha256 %s, latent %d) on %s with %s",
            loaded.checkpoint,
            loaded.sha256[:12],
            loaded.latent_dim,
            loaded.device,
            loaded.backend.name,
        )

    async def encode(self, m: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cost = self.admission.reserve("encode", x.shape[0])
        try:
            return await self.encoder.submit(m, x)
        finally:
            self.admission.release(cost)

    async def decode(self, m: LoadedModel, z: torch.Tensor) -> torch.Tensor:
        cost = self.admission.reserve("decode", z.shape[0])
        try:
            return await self.decoder.submit(m, z)
        finally:
            self.admission.release(cost)

    async def reconstruct(self, m: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cost = self.admission.reserve("reconstruct", x.shape[0])
        try:
            return await self.reconstructor.submit(m, x)
        finally:
            self.admission.release(cost)

    async def sample(
        self,
        m: LoadedModel,
        n: int,
        seed: int,
        temperature: float,
        prior: str = "checkpoint",
        digits: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents come from a per-request CPU generator, so a seed means the same digits no
        matter which batch (or device) decodes them. `prior` is "checkpoint" (the checkpoint's
        own) or "standard" (N(0, I)); `digits` (one per image) draws those digits instead."""
        generator = torch.Generator().manual_seed(seed)
        if digits is not None and self.guide is not None:
            return await self._guided_digits(m, digits, generator, temperature, self.guide)
        if digits is not None:
            # A few small triangular solves per redraw: off the event loop, it is not free.
            z = await asyncio.to_thread(draw_digits, m, digits, generator, temperature)
        else:
            chosen = m.prior if prior == "checkpoint" else StandardNormalPrior(m.latent_dim)
            z = chosen.sample(n, generator, temperature)
        return z, await self.decode(m, z)

    async def _guided_digits(
        self,
        m: LoadedModel,
        digits: list[int],
        generator: torch.Generator,
        temperature: float,
        guide: DigitGuide,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`models/digit_guide.py`'s procedure: every candidate drawn up front (so the seed alone
        decides), first candidates decoded and classified, the refused ones' other candidates
        decoded and classified, one kept per image. Decoding goes through the batcher; the guide
        runs in the inference thread, never on the event loop."""
        assert isinstance(m.prior, MixturePrior)  # check_digits ran first
        loop = asyncio.get_running_loop()
        asked = torch.tensor(digits, dtype=torch.long)
        z = await asyncio.to_thread(
            draw_candidates, m.prior, asked, guide.candidates, generator, temperature
        )
        first_images = await self.decode(m, first_candidates(z))
        first_probs = await loop.run_in_executor(self._executor, guide.probabilities, first_images)
        rows = refused(first_probs, asked)
        retry_images, retry_probs = first_images[:0], first_probs[:0]
        if len(rows) and guide.candidates > 1:
            retry_images = await self.decode(m, retry_latents(z, rows))
            retry_probs = await loop.run_in_executor(
                self._executor, guide.probabilities, retry_images
            )
        return choose(z, asked, first_images, first_probs, rows, retry_images, retry_probs)

    async def interpolate(
        self, m: LoadedModel, start: torch.Tensor, end: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`steps` latents evenly spaced on the line from `start` to `end` (both included), decoded
        in one batch: (latents [steps, latent_dim], images [steps, 1, 32, 32])."""
        weights = torch.linspace(0.0, 1.0, steps).unsqueeze(1)
        z = torch.lerp(start.unsqueeze(0), end.unsqueeze(0), weights)
        return z, await self.decode(m, z)
