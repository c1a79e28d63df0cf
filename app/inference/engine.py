"""The served model behind micro-batchers: what the routes call, and nothing about HTTP.

The seam follows LitServe: `app.inference.artifact.loading` is setup (load, check the backend, warm
up), the runner's operations are `predict` over one batch, `MicroBatcher` owns queueing and
batching, and `InferenceScheduler` the inference thread's turns. A request whose rows fit one slice
goes to the light lane (batched), a larger one to the heavy lane in slices (`app.inference.sliced`).
Every operation books its estimated cost with admission control first, so a request is either
admitted whole or refused at once with 503 and `Retry-After`, and the booking is held until the
thread is done with its rows."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import platform
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from app import deadline, tracing
from app.config import Settings
from app.errors import CheckpointRejected, InvalidInput, NotReady
from app.inference import metrics
from app.inference.admission import LIGHT, Booking, DecodeGate, InferenceGate
from app.inference.artifact.loading import load_digit_guide, load_model, with_digit_guide
from app.inference.batching import MicroBatcher, Output
from app.inference.scheduler import InferenceScheduler
from app.inference.served import LoadedModel
from app.inference.sliced import GuidedDigits, RowsInSlices
from app.inference.threads import inference_threads, limit_numpy_threads, lone_rows_now
from models.checkpoint_errors import CheckpointError
from models.digit_guide import DigitGuide
from models.prior import MixturePrior, StandardNormal
from models.torch_rng import TorchCompatibleGenerator

log = logging.getLogger("app.engine")
CALIBRATION_ROWS = 32  # rows per timed batch at start-up: about what a slice holds on a CPU

__all__ = ["Engine", "LoadedModel", "check_digits", "sample_prior_name"]


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


class Engine:
    """The served model, its three batched operations (encode, decode, reconstruct) and the
    latent-space operations built on them (sampling, chosen digits, interpolation)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._current: LoadedModel | None = None
        self.guide: DigitGuide | None = None  # set by start(); None: chosen digits unguided
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.scheduler = InferenceScheduler(self._executor)
        self.lone_rows_now = lone_rows_now(settings.inline_lone_batches, settings.device)
        self._reload_lock = asyncio.Lock()
        self.admission = gate = InferenceGate(
            settings.slice_ms / 1000, settings.light_queue_ms / 1000, settings.max_batch_size
        )

        batcher_type = _batcher_type()

        def batcher(op: str, lone_rows_now: bool = False) -> MicroBatcher:
            def run(m: LoadedModel, rows: np.ndarray) -> Output:
                return operation(m, op)(rows)

            return batcher_type(
                op,
                gate.timed(op, run),
                self.scheduler,
                max_batch_size=settings.max_batch_size,
                batch_rows=lambda: gate.slice_rows(op),
                max_wait_ms=settings.max_wait_ms,
                queue_size=settings.queue_size,
                lone_rows_now=lone_rows_now,
            )

        self.encoder = batcher("encode")
        # Uploads reach the other two one by one from the decode threads: only /sample's lone
        # rows arrive straight from HTTP.
        self.decoder = batcher("decode", lone_rows_now=self.lone_rows_now)
        self.reconstructor = batcher("reconstruct")

    def batch_uploads_with(self, gate: DecodeGate) -> None:
        """Lets encode and reconstruct batches wait (up to `VAE_UPLOAD_BATCH_WAIT_MS`) for uploads
        that `gate` is still decoding, instead of running batches of one or two. An idle gate means
        nothing is on its way, so a lone upload (or an OIP tensor) never waits."""
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
        limit_numpy_threads(inference_threads(s.torch_threads))
        self.guide = await asyncio.to_thread(load_digit_guide, s)
        loaded = await asyncio.to_thread(self._load, s.checkpoint)
        await asyncio.to_thread(self._calibrate, loaded)
        self._install(loaded)
        self.scheduler.start()
        for batcher in (self.encoder, self.decoder, self.reconstructor):
            batcher.start()
        return loaded

    async def stop(self) -> None:
        for batcher in (self.encoder, self.decoder, self.reconstructor):
            await batcher.stop()
        await self.scheduler.stop()
        self._executor.shutdown(wait=True)

    async def reload(self, path: Path | None = None, shown_as: str | None = None) -> LoadedModel:
        """Loads `path` beside the serving model and swaps. A checkpoint that cannot be served
        changes nothing: `CheckpointRejected` (409) with the reason, the old model serving on.

        `shown_as`: the checkpoint's name in the answers (the refusal's reason included), as the
        caller gave it; the server's own path stays in the server's log.
        """
        path = path or self.settings.checkpoint
        async with self._reload_lock:
            try:
                loaded = await asyncio.to_thread(self._load, path)
            except CheckpointError as exc:
                metrics.MODEL_LOAD_FAILURES.inc()
                log.warning("reload of %s refused: %s", path, exc)
                reason = str(exc) if shown_as is None else str(exc).replace(str(path), shown_as)
                raise CheckpointRejected(
                    f"reload refused, still serving the old model: {reason}"
                ) from None
            if shown_as is not None:
                loaded = dataclasses.replace(loaded, shown_as=shown_as)
            self._install(loaded)
        return loaded

    def _load(self, path: Path) -> LoadedModel:
        """The model at `path`, its typicality score bound to the digit guide where they match."""
        s = self.settings
        loaded = load_model(
            path,
            s.device,
            s.fp16,
            s.max_batch_size,
            backend=s.backend,
            threads=inference_threads(s.torch_threads),
            cuda_graphs=s.cuda_graphs,
        )
        return with_digit_guide(loaded, self.guide)

    def _calibrate(self, m: LoadedModel) -> None:
        """Times each operation on a batch, before the first request is admitted."""
        rows = min(self.settings.max_batch_size, CALIBRATION_ROWS)
        z = np.zeros((rows, m.latent_dim), np.float32)
        x = m.runner.decode(z)
        gate, guide = self.admission, self.guide
        gate.calibrate("decode", lambda: m.runner.decode(z), rows)
        encode, reconstruct = operation(m, "encode"), operation(m, "reconstruct")
        gate.calibrate("encode", lambda: encode(x), rows)
        gate.calibrate("reconstruct", lambda: reconstruct(x), rows)
        if guide is not None:
            gate.calibrate("classify", lambda: guide.probabilities(x), rows)

    def _install(self, loaded: LoadedModel) -> None:
        self._current = loaded
        _publish_model_info(loaded)
        log.info(
            "serving %s (sha256 %s, latent %d) on %s with %s",
            loaded.checkpoint,
            loaded.sha256[:12],
            loaded.latent_dim,
            loaded.device,
            loaded.backend.name,
        )

    async def _submit(
        self,
        batcher: MicroBatcher,
        m: LoadedModel,
        rows: np.ndarray,
        booking: Booking | None = None,
    ) -> Output:
        """Runs the rows, booked with admission control first (503 at once if they would wait
        too long) unless `booking` already holds them: in a batch when they fit one slice, else
        in slices in the heavy lane."""
        op, n = batcher.name, rows.shape[0]
        booking = booking or self._book(op, n)
        if booking.lane == LIGHT:
            return await batcher.submit(m, rows, booking)
        run = operation(m, op)
        gate = self.admission
        return await self.scheduler.run_heavy(RowsInSlices(op, run, rows, gate, booking))

    def _book(self, op: str, rows: int) -> Booking:
        gate = self.admission
        return gate.book(gate.lane(rows, op), gate.cost(rows, op), self._time_left())

    def _time_left(self) -> float:
        return deadline.time_left_s(self.settings.request_timeout_s)

    async def encode(self, m: LoadedModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x [N,1,32,32] -> (mu, logvar), each [N, latent_dim], without the typicality score:
        its rows run as `m.unscored`, which the batcher never merges with scored ones."""
        mu, logvar, *_ = await self._submit(self.encoder, m.unscored, x)
        return mu, logvar

    async def encode_scored(
        self, m: LoadedModel, x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """x -> (mu, logvar, typicality [N] or None where the model has no calibration)."""
        mu, logvar, *score = await self._submit(self.encoder, m, x)
        return mu, logvar, score[0] if score else None

    async def decode(self, m: LoadedModel, z: np.ndarray) -> np.ndarray:
        """z [N, latent_dim] -> images [N,1,32,32] in [0, 1]."""
        return await self._submit(self.decoder, m, z)  # type: ignore[return-value]

    async def reconstruct(self, m: LoadedModel, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """x -> (mu, logvar, reconstruction at the posterior mean, -ELBO at z=mu in nats)."""
        out = await self._submit(self.reconstructor, m, x)
        return tuple(out[:4])

    async def reconstruct_scored(self, m: LoadedModel, x: np.ndarray) -> tuple[Any, ...]:
        """`reconstruct`, then the typicality [N] (None where the model has no calibration)."""
        out = await self._submit(self.reconstructor, m, x)
        return (*out[:4], out[4] if len(out) > 4 else None)

    async def sample(
        self,
        m: LoadedModel,
        n: int,
        seed: int,
        temperature: float,
        prior: str = "checkpoint",
        digits: list[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Latents come from a per-request generator (`TorchCompatibleGenerator`), so a seed
        means the same digits whichever batch, device, file (`.pt` or export) or runtime
        (torch or not) decodes them.
        `prior` is "checkpoint" (the checkpoint's own) or "standard" (N(0, I)); `digits` (one
        per image) draws those digits instead."""
        if digits is not None:
            return await self._chosen_digits(m, digits, seed, temperature)
        booking = self._book("decode", n)  # before any work: a refusal costs nothing more
        try:
            chosen = m.prior if prior == "checkpoint" else StandardNormal(m.latent_dim)
            z = chosen.sample(n, TorchCompatibleGenerator.for_one_call(seed), temperature)
        except BaseException:
            booking.close()
            raise
        return z, await self._submit(self.decoder, m, z, booking)  # type: ignore[return-value]

    async def _chosen_digits(
        self, m: LoadedModel, digits: list[int], seed: int, temperature: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """`models.digit_guide.guided_digits` in slices (`GuidedDigits`): booked up front
        (`GuidedDigits.rows_to_book`), so it is admitted whole or refused at once, never
        half-way; the booking shrinks as slices end."""
        assert isinstance(m.prior, MixturePrior)  # check_digits ran first
        guide, prior = self.guide, m.prior
        if guide is None:
            rng = TorchCompatibleGenerator.for_one_call(seed)
            z = prior.sample_digits(digits, rng, temperature)
            return z, await self.decode(m, z)
        gate = self.admission
        rows = GuidedDigits.rows_to_book(len(digits), guide, gate)
        lane = gate.lane(rows, *GuidedDigits.OPS)
        booking = gate.book(lane, gate.cost(rows, *GuidedDigits.OPS), self._time_left())
        try:
            random = TorchCompatibleGenerator(seed)  # after booking: a refusal costs nothing more
            job = GuidedDigits(
                prior, digits, random, temperature, m.runner.decode, guide, gate, booking
            )
        except BaseException:
            booking.close()
            raise
        return await self.scheduler.run_heavy(job)

    async def interpolate(
        self, m: LoadedModel, start: np.ndarray, end: np.ndarray, steps: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """`steps` latents evenly spaced on the line from `start` to `end` (both included), decoded
        in one batch: (latents [steps, latent_dim], images [steps, 1, 32, 32])."""
        z = _lerp(start[None].astype(np.float32), end[None].astype(np.float32), steps)
        return z, await self.decode(m, z)


SCORED_OPS = ("encode", "reconstruct")


def operation(m: LoadedModel, op: str) -> Callable[[np.ndarray], Output]:
    """The runner's `op`; encode and reconstruct of a calibrated model append the typicality of
    each row (`models.typicality`: NumPy on mu and logvar, and the digit guide on the rows where
    one is bound), for the whole batch at once, on the inference thread with the forward pass, so
    admission control's timings include it."""
    run = getattr(m.runner, op)
    typicality = m.typicality
    if typicality is None or op not in SCORED_OPS:
        return run

    def scored(rows: np.ndarray) -> Output:
        out = run(rows)
        return (*out, typicality.score(rows, out[0], out[1]))

    return scored


def _batcher_type() -> type[MicroBatcher]:
    """The batcher with queue and forward-pass spans when tracing is on, else the plain one."""
    if not tracing.ENABLED:
        return MicroBatcher
    from app.inference.traced_batching import TracedMicroBatcher

    return TracedMicroBatcher


def _publish_model_info(m: LoadedModel) -> None:
    """`vae_model_info` and `vae_model_loads_total` for the checkpoint now serving."""
    metrics.MODEL_INFO.info(
        {
            "checkpoint": m.checkpoint.name,  # the file name only: /metrics is open to all
            "sha256": m.sha256,
            "preset": str(m.metadata.get("preset", "unknown")),
            "latent_dim": str(m.latent_dim),
            "device": m.device,
            "dtype": m.dtype,
            "backend": m.backend.name,
            "artifact": m.artifact.kind,
            "runtime": m.artifact.runtime,
            "python": platform.python_version(),
        }
    )
    metrics.MODEL_LOADS.inc()


def _lerp(start: np.ndarray, end: np.ndarray, steps: int) -> np.ndarray:
    """`torch.lerp(start, end, torch.linspace(0, 1, steps))` in float32, as torch computes it:
    start + w (end - start) for w < 0.5, end - (end - start)(1 - w) from 0.5 on, so both ends
    come out exact."""
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    diff = end - start
    return np.where(weights < 0.5, start + weights * diff, end - diff * (1 - weights)).astype(
        np.float32
    )
