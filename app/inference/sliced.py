"""Heavy inference in slices (`app.inference.scheduler.SlicedJob`): rows, and chosen digits.

Each `step` runs one slice on the inference thread (at most `slice_rows` rows through the model),
so lighter requests can take their turn between two slices; `settle` keeps booked only what the
work left could still take.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from app.inference.admission import Booking, InferenceGate
from app.inference.batching import Output
from models.digit_guide import (
    DigitGuide,
    choose,
    draw_candidates_in_steps,
    first_candidates,
    refused,
    retry_latents,
)
from models.prior import MixturePrior, RandomSource


class RowsInSlices:
    """One operation over more rows than a forward pass takes: `slice_rows` rows per step, the
    outputs joined in order."""

    def __init__(
        self,
        op: str,
        fn: Callable[[np.ndarray], Output],
        rows: np.ndarray,
        gate: InferenceGate,
        booking: Booking,
    ) -> None:
        self.op, self._fn, self._rows = op, fn, rows
        self._gate, self._booking = gate, booking
        self._step = gate.slice_rows(op)
        self._done = 0
        self._parts: list[Output] = []

    def step(self) -> bool:
        chunk = self._rows[self._done : self._done + self._step]
        started = time.perf_counter()
        self._parts.append(self._fn(chunk))
        self._gate.learn(self.op, len(chunk), time.perf_counter() - started)
        self._done += len(chunk)
        return self._done >= len(self._rows)

    def settle(self) -> None:
        self._booking.keep(self._gate.cost(len(self._rows) - self._done, self.op))

    def result(self) -> Output:
        return _joined(self._parts)

    def finish(self) -> None:
        self._booking.finish()

    def close(self) -> None:
        self._booking.close()


class GuidedDigits:
    """`models.digit_guide.guided_digits` in slices: every image's first candidate, then the other
    candidates of the images the guide refused, each slice decoded and classified; the same
    latents and choices as the whole procedure (all candidates are drawn up front)."""

    OPS = ("decode", "classify")

    def __init__(
        self,
        prior: MixturePrior,
        digits: list[int],
        random: RandomSource,
        temperature: float,
        decode: Callable[[np.ndarray], np.ndarray],
        guide: DigitGuide,
        gate: InferenceGate,
        booking: Booking,
    ) -> None:
        self.digits = np.asarray(digits, dtype=np.int64).reshape(-1)
        self._drawing = draw_candidates_in_steps(
            prior, self.digits, guide.candidates, random, temperature
        )
        self._decode, self._guide = decode, guide
        self._gate, self._booking = gate, booking
        self._step = gate.slice_rows(*self.OPS)
        self._z: np.ndarray | None = None
        self._queue: np.ndarray | None = None  # the latents of the phase in progress
        self._done = 0
        self._images: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []
        self._first: tuple[np.ndarray, np.ndarray] | None = None
        self._rows: np.ndarray | None = None  # refused images, once the first phase ends
        self._result: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def rows_to_book(digits: int, guide: DigitGuide, gate: InferenceGate) -> int:
        """Every first candidate, and the other candidates of twice the share of images the
        guide has been refusing (plus 5 %): booking all candidates of every image would refuse
        most requests for work that almost never runs; `settle` corrects it after the first
        phase, and the lane's headroom absorbs the rest."""
        share = min(1.0, 2 * gate.refused_share + 0.05)
        return digits + int(np.ceil(digits * (guide.candidates - 1) * share))

    def step(self) -> bool:
        if self._z is None:  # drawn on the inference thread, a scoring step at a time
            try:
                next(self._drawing)
            except StopIteration as drawn:
                self._z = drawn.value
                self._queue = first_candidates(drawn.value)
            return False
        assert self._queue is not None
        chunk = self._queue[self._done : self._done + self._step]
        started = time.perf_counter()
        images = self._decode(chunk)
        decoded = time.perf_counter()
        self._images.append(images)
        self._probs.append(self._guide.probabilities(images))
        self._gate.learn("decode", len(chunk), decoded - started)
        self._gate.learn("classify", len(chunk), time.perf_counter() - decoded)
        self._done += len(chunk)
        if self._done < len(self._queue):
            return False
        return self._end_phase()

    def _end_phase(self) -> bool:
        assert self._z is not None
        images, probs = _joined(self._images), _joined(self._probs)
        self._images, self._probs, self._done = [], [], 0
        if self._first is None:
            self._first = images, probs
            self._rows = refused(probs, self.digits)
            self._gate.learn_refused_share(len(self._rows) / len(self.digits))
            self._queue = retry_latents(self._z, self._rows)
            if len(self._queue):
                return False
            images, probs = images[:0], probs[:0]
        assert self._rows is not None
        self._result = choose(self._z, self.digits, *self._first, self._rows, images, probs)
        return True

    def settle(self) -> None:
        if self._rows is None:  # still on the first candidates: all retries may follow
            first_left = len(self.digits) - self._done
            left = first_left + len(self.digits) * (self._guide.candidates - 1)
        else:
            left = len(self._queue) - self._done if self._queue is not None else 0
        self._booking.keep(self._gate.cost(left, *self.OPS))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        assert self._result is not None
        return self._result

    def finish(self) -> None:
        self._booking.finish()

    def close(self) -> None:
        self._booking.close()


def _joined(parts: list[Any]) -> Any:
    """Slices' outputs (arrays, or tuples of arrays) back in one piece, in the order of the rows."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(column) for column in zip(*parts, strict=True))
    return np.concatenate(parts)
