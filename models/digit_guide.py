"""Chosen digits that are the asked digit: draw a few candidates, keep one a classifier accepts.

The per-digit mixtures put most of a digit's mass where that digit encodes, but about 3 % of
their draws still decode to something else (a 4 that reads as a 9, a 7 as a 1). A latent-space
test cannot see that; the decoded image can. So a digit request draws `candidates` latents per
image from that digit's mixture, decodes the first one, and asks a small classifier (the "guide",
`models/mnist-digit-guide.pt`) what it shows. Only the images whose first candidate is refused
decode their other candidates; each image keeps its first candidate the guide calls the asked
digit, or else the one the guide gives the highest probability for it.

The guide is a different training run from the judge (`models/mnist-classifier.pt`) that
`vae-eval` measures accuracy with, so the measure is not the filter.

It works on NumPy arrays, so the torch-free image runs the very same steps (its guide is the
exported ONNX graph). All candidates are drawn up front from the request's generator, so the
chosen image depends only on the seed (never on how many candidates were decoded): same request,
same bytes. The steps are split (`first_candidates`, `refused`, `retry_latents`, `choose`) so
that the service (async, decoding through its batcher) and `vae-eval` (plain calls) run the very
same procedure;
`guided_digits` is the synchronous whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.prior import MixturePrior, RandomSource, run_to_end

DEFAULT_CANDIDATES = 8
Classify = Callable[[np.ndarray], np.ndarray]  # images [N, 1, 32, 32] -> probabilities [N, 10]


@dataclass(frozen=True, eq=False)
class DigitGuide:
    """A loaded guide classifier (torch on the CPU, or its exported ONNX graph) and how many
    candidates a digit may try. The procedure below sees only `probabilities`."""

    classify: Classify
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    candidates: int = DEFAULT_CANDIDATES
    runtime: str = "torch"

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities [N, 10] for decoded images [N, 1, 32, 32]."""
        if len(images) == 0:
            return np.zeros((0, 10), np.float32)
        return self.classify(np.ascontiguousarray(images, dtype=np.float32))

    def describe(self) -> dict[str, Any]:
        """For /model: which guide, how good it is on real digits, how many candidates."""
        return {
            "path": str(self.path),
            "candidates": self.candidates,
            "test_accuracy": self.metadata.get("test_accuracy"),
            "runtime": self.runtime,
        }


def load_guide(path: str | os.PathLike, candidates: int = DEFAULT_CANDIDATES) -> DigitGuide:
    """Loads a torch guide with the classifier's safe loader (raises `ClassifierError`)."""
    import torch

    from models.classifier import classify, load_classifier

    if candidates < 1:
        raise ValueError("a digit needs at least one candidate")
    torch_threads = torch.get_num_threads()  # loading must not change the service's threads
    model, metadata = load_classifier(path, device="cpu")
    torch.set_num_threads(torch_threads)

    def probabilities(images: np.ndarray) -> np.ndarray:
        return classify(model, torch.from_numpy(images))[0].numpy()

    return DigitGuide(probabilities, Path(path), metadata, candidates)


def draw_candidates_in_steps(
    prior: MixturePrior,
    digits: np.ndarray | list[int],
    candidates: int,
    rng: RandomSource,
    temperature: float = 1.0,
) -> Generator[None, None, np.ndarray]:
    """[n, candidates, D] latents: row i holds image i's candidates, all drawn for digits[i]; in
    steps (`MixturePrior.sample_digits_in_steps`), `run_to_end` for all at once."""
    digits = np.asarray(digits, dtype=np.int64).reshape(-1)
    steps = prior.sample_digits_in_steps(np.repeat(digits, candidates), rng, temperature)
    z = yield from steps
    return z.reshape(len(digits), candidates, -1)


def first_candidates(z: np.ndarray) -> np.ndarray:
    """The latents decoded first: every image's candidate 0, [n, D]."""
    return z[:, 0]


def refused(probs: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """Indices of the images whose first candidate the guide does not read as the asked digit."""
    return np.flatnonzero(probs.argmax(1) != digits)


def retry_latents(z: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The other candidates of the refused images, flattened [len(rows) * (candidates-1), D]."""
    return z[rows, 1:].reshape(-1, z.shape[-1])


def choose(
    z: np.ndarray,
    digits: np.ndarray,
    first_images: np.ndarray,
    first_probs: np.ndarray,
    rows: np.ndarray,
    retry_images: np.ndarray,
    retry_probs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The kept (latents [n, D], images [n, 1, 32, 32]): candidate 0 unless refused, else the
    first accepted of the rest, else the one with the highest probability of the asked digit."""
    latents = first_candidates(z).copy()
    images = first_images.copy()
    k = z.shape[1]
    if len(rows) == 0 or k == 1:
        return latents, images
    m = len(rows)
    probs = np.concatenate([first_probs[rows][:, None], retry_probs.reshape(m, k - 1, -1)], axis=1)
    shaped = retry_images.reshape(m, k - 1, *retry_images.shape[1:])
    asked = digits[rows]
    p_asked = probs[np.arange(m), :, asked]  # [m, k]
    accepted = probs.argmax(-1) == asked[:, None]  # [m, k]
    first_accepted = accepted.argmax(1)  # argmax returns the first maximum
    pick = np.where(accepted.any(1), first_accepted, p_asked.argmax(1))
    retried = pick > 0  # pick == 0 only when no candidate beats the first one
    latents[rows[retried]] = z[rows[retried], pick[retried]]
    images[rows[retried]] = shaped[np.flatnonzero(retried), pick[retried] - 1]
    return latents, images


def guided_digits(
    prior: MixturePrior,
    digits: np.ndarray | list[int],
    rng: RandomSource,
    decode: Callable[[np.ndarray], np.ndarray],
    guide: DigitGuide,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole procedure with a plain `decode` (latents -> images): what `vae-eval` runs."""
    digits = np.asarray(digits, dtype=np.int64).reshape(-1)
    z = run_to_end(draw_candidates_in_steps(prior, digits, guide.candidates, rng, temperature))
    first_images = decode(first_candidates(z))
    first_probs = guide.probabilities(first_images)
    rows = refused(first_probs, digits)
    retry_z = retry_latents(z, rows)
    retry_images = decode(retry_z) if len(retry_z) else first_images[:0]
    retry_probs = guide.probabilities(retry_images)
    return choose(z, digits, first_images, first_probs, rows, retry_images, retry_probs)
