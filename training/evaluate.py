"""`vae-eval`: how good is a checkpoint? Negative ELBO, importance-weighted NLL, active units,
and how digit-like its samples are.

Likelihoods are in nats per test image, on the 784 real pixels of dynamically binarized test
digits drawn once with a fixed seed, so two checkpoints are compared on the very same bits.
Sample quality (MNIST only) comes from the shipped classifier (`models/mnist-classifier.pt`):
inception score, confident fraction and Frechet distance of seeded prior samples, beside the same
scores for real digits (`training/sample_quality.py`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from models.checkpoint import (
    CheckpointError,
    load_checkpoint_and_prior,
    model_from_payload,
    read_checkpoint,
    save_checkpoint,
)
from models.classifier import GUIDE_PATH
from models.digit_guide import DEFAULT_CANDIDATES, DigitGuide, guided_digits, load_guide
from models.prior import MixturePrior, Prior, RandomSource, StandardNormal
from models.progress import add_progress_flag, progress_bar
from models.runtime import resolve_device
from models.torch_rng import TorchCompatibleGenerator
from models.vae import ConvVAE
from training.classifier import DEFAULT_PATH as DEFAULT_CLASSIFIER
from training.classifier import ClassifierError, load_classifier
from training.data import Split, binarize, load_split, to_model_input
from training.metrics_log import print_record
from training.mixture import log_density
from training.objective import (
    bernoulli_nll,
    gaussian_kl,
    log_normal,
)
from training.sample_quality import SampleJudge

# (n, random numbers) -> n sampled images [n, 1, 32, 32] in [0, 1]; any prior plugs in through
# this. The random numbers are the service's (`TorchCompatibleGenerator`), so a seed here draws
# the latents `/sample` draws for it.
Sampler = Callable[[int, RandomSource], torch.Tensor]

ACTIVE_UNIT_THRESHOLD = 0.01
# Images through the decoder at once in the likelihood: large batches keep a GPU busy, while a
# CPU runs small ones faster (docs/model-card.md, "Likelihood with the served prior").
MAX_DECODES = {"cuda": 20_000, "cpu": 600}


def binarized_test_set(images_u8: torch.Tensor, seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return binarize(to_model_input(images_u8.cpu()), generator).to(device)


@torch.inference_mode()
def elbo_terms(
    model: ConvVAE, x: torch.Tensor, batch_size: int = 500, prior: Prior | None = None
) -> dict[str, float]:
    """Mean negative ELBO, reconstruction and KL over x (one posterior sample per digit).

    Against N(0, I) (`prior` None or standard) the KL is exact; against a learned prior it has
    no closed form and is estimated from that same sample: log q(z|x) - log p(z)."""
    generator = torch.Generator(device=x.device).manual_seed(0)
    learned = isinstance(prior, MixturePrior)
    log_prior = log_density(prior, x.device) if learned else None
    rec_sum = kl_sum = 0.0
    for chunk in x.split(batch_size):
        mu, logvar = model.encode(chunk)
        z = model.reparameterize(mu, logvar, generator)
        rec_sum += bernoulli_nll(model.decode_logits(z), chunk).sum().item()
        if log_prior is not None:
            kl_sum += (log_normal(z, mu, logvar) - log_prior(z.float())).sum().item()
        else:
            kl_sum += gaussian_kl(mu, logvar).sum().item()
    n = len(x)
    return {"neg_elbo": (rec_sum + kl_sum) / n, "reconstruction": rec_sum / n, "kl": kl_sum / n}


@torch.inference_mode()
def iwae_log_likelihood(
    model: ConvVAE,
    x: torch.Tensor,
    k: int = 1000,
    max_decodes: int = 20_000,
    seed: int = 0,
    prior: Prior | None = None,
) -> torch.Tensor:
    """log p(x) ~ logsumexp_k[log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log k, per digit [N].

    It is a lower bound on log p(x) that tightens as k grows (Burda et al., 2016). Work is split
    so that at most `max_decodes` images go through the decoder at once. `prior` is p(z)
    (default N(0, I)).
    """
    priors = {"p": prior or StandardNormal(model.latent_dim)}
    return iwae_log_likelihoods(model, x, priors, k, max_decodes, seed)["p"]


@torch.inference_mode()
def iwae_log_likelihoods(
    model: ConvVAE,
    x: torch.Tensor,
    priors: dict[str, Prior],
    k: int = 1000,
    max_decodes: int = 20_000,
    seed: int = 0,
    on_chunk: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, torch.Tensor]:
    """`iwae_log_likelihood` under several priors from the same draws z_k ~ q(z|x): the decoder
    (all the cost) runs once, and the priors are compared on identical samples.

    `on_chunk` sees each chunk's per-digit log-likelihoods as they finish (a progress bar, a
    partial result of a long run); it does not change the draws."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    images_per_chunk = max(1, min(len(x), max_decodes // k))
    samples_per_pass = max(1, min(k, max_decodes // images_per_chunk))
    log_priors = {name: log_density(p, x.device) for name, p in priors.items()}
    out: dict[str, list[torch.Tensor]] = {name: [] for name in priors}
    for chunk in x.split(images_per_chunk):
        mu, logvar = model.encode(chunk)
        std = torch.exp(0.5 * logvar)
        log_w: dict[str, list[torch.Tensor]] = {name: [] for name in priors}
        for start in range(0, k, samples_per_pass):
            s = min(samples_per_pass, k - start)
            eps = torch.randn((s, *mu.shape), generator=generator, device=x.device)
            z = mu + eps * std  # [s, B, D]
            logits = model.decode_logits(z.flatten(0, 1))
            target = chunk.expand(s, *chunk.shape).flatten(0, 1)
            log_px_z = -bernoulli_nll(logits, target).view(s, -1)
            log_q = log_normal(z, mu, logvar)
            for name, log_prior in log_priors.items():
                log_w[name].append(log_px_z + log_prior(z.float()) - log_q)
        done = {
            name: torch.logsumexp(torch.cat(log_w[name]), dim=0) - math.log(k) for name in priors
        }
        for name, ll in done.items():
            out[name].append(ll)
        if on_chunk is not None:
            on_chunk(done)
    return {name: torch.cat(parts) for name, parts in out.items()}


@torch.inference_mode()
def active_units(model: ConvVAE, x: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Latent dims whose posterior mean moves with the input: Var_x(E[z|x]) > threshold."""
    mus = torch.cat([model.encode(chunk)[0] for chunk in x.split(1000)])
    return int((mus.float().var(dim=0) > threshold).sum().item())


@torch.inference_mode()
def save_sample_grid(
    model: ConvVAE,
    path: Path,
    n: int = 64,
    seed: int = 0,
    prior: Prior | None = None,
    temperature: float = 1.0,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = sample_images(model, n, seed, prior, temperature)
    save_image(images, path, nrow=int(math.sqrt(n)), pad_value=0.5)
    return path


@torch.inference_mode()
def sample_images(
    model: ConvVAE,
    n: int = 64,
    seed: int = 0,
    prior: Prior | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """n decoded prior samples on the CPU, [n, 1, 32, 32]; the same seed, the same images."""
    draw = prior_sampler(model, prior or StandardNormal(model.latent_dim), temperature)
    return draw(n, TorchCompatibleGenerator(seed)).cpu()


@torch.inference_mode()
def save_digit_grid(
    model: ConvVAE,
    prior: MixturePrior,
    path: Path,
    per_digit: int = 10,
    seed: int = 0,
    temperature: float = 1.0,
    guide: DigitGuide | None = None,
) -> Path:
    """One row per digit 0..9, each drawn on request from the prior's per-digit mixtures (through
    the guide, as the service draws them, when there is one)."""
    digits = torch.arange(10).repeat_interleave(per_digit)
    draw = digit_sampler(model, prior, temperature, guide)
    images = draw(len(digits), TorchCompatibleGenerator(seed), digits)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.cpu(), path, nrow=per_digit, pad_value=0.5)
    return path


def save_reconstruction_grid(model: ConvVAE, grey: torch.Tensor, path: Path, n: int = 32) -> Path:
    """The `reconstruction_rows` of the first n digits, as one PNG."""
    save_image(reconstruction_rows(model, grey, n), path, nrow=8, pad_value=0.5)
    return path


@torch.inference_mode()
def reconstruction_rows(model: ConvVAE, x: torch.Tensor, n: int = 32) -> torch.Tensor:
    """Rows of 8 that alternate: originals, then their reconstructions (posterior means, no
    sampling); [2n, 1, 32, 32] on the CPU."""
    x = x[:n]
    recon = model.decode(model.encode(x)[0])
    return torch.cat([t for i in range(0, n, 8) for t in (x[i : i + 8], recon[i : i + 8])]).cpu()


def evaluate(
    model: ConvVAE,
    test_images_u8: torch.Tensor,
    k: int = 1000,
    limit: int | None = None,
    seed: int = 0,
    max_decodes: int = 20_000,
    prior: Prior | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """The checkpoint's numbers under `prior` (default N(0, I)). With a learned prior the
    N(0, I) numbers come too, as `*_standard_prior`, from the very same posterior samples.
    `progress`: a bar over the digits of the importance-weighted bound (minutes on a CPU)."""
    device = next(model.parameters()).device
    model.eval()
    x = binarized_test_set(test_images_u8[:limit] if limit else test_images_u8, seed, device)
    learned = isinstance(prior, MixturePrior)
    metrics: dict[str, float] = dict(elbo_terms(model, x, prior=prior))
    if learned:
        standard = elbo_terms(model, x)
        metrics.update({f"{key}_standard_prior": value for key, value in standard.items()})
    metrics["active_units"] = active_units(model, x)
    if k > 0:
        started = time.perf_counter()
        priors: dict[str, Prior] = {"prior": prior or StandardNormal(model.latent_dim)}
        if learned:
            priors["standard"] = StandardNormal(model.latent_dim)
        with progress_bar(
            total=len(x), desc=f"IWAE NLL, K={k}", unit="digit", enabled=progress
        ) as bar:
            ll = iwae_log_likelihoods(
                model,
                x,
                priors,
                k,
                max_decodes,
                seed,
                on_chunk=lambda done: bar.update(len(next(iter(done.values())))),
            )
        metrics["iwae_nll"] = -ll["prior"].mean().item()
        if learned:
            metrics["iwae_nll_standard_prior"] = -ll["standard"].mean().item()
        metrics["iwae_k"] = k
        metrics["iwae_seconds"] = round(time.perf_counter() - started, 1)
    metrics["test_images"] = len(x)
    return metrics


def standard_normal_sampler(model: ConvVAE, temperature: float = 1.0) -> Sampler:
    """Decodes z ~ N(0, temperature^2 I): the prior the ELBO was trained with."""
    return prior_sampler(model, StandardNormal(model.latent_dim), temperature)


def prior_sampler(model: ConvVAE, prior: Prior, temperature: float = 1.0) -> Sampler:
    """Decodes z drawn from `prior` on the CPU, as the service does."""
    device = next(model.parameters()).device

    def draw(n: int, rng: RandomSource) -> torch.Tensor:
        z = torch.from_numpy(prior.sample(n, rng, temperature))
        return model.decode(z.to(device))

    return draw


def digit_sampler(
    model: ConvVAE,
    prior: MixturePrior,
    temperature: float = 1.0,
    guide: DigitGuide | None = None,
) -> Sampler:
    """Draws digits 0, 1, ..., 9, 0, 1, ... in turn from the prior's per-digit mixtures; with
    batches that are a multiple of 10, image i shows digit i % 10 (`cycled_digits`). With a
    `guide`, each digit goes through the service's acceptance step (`models/digit_guide.py`)."""
    device = next(model.parameters()).device

    def decode(z: torch.Tensor) -> torch.Tensor:
        return model.decode(z.to(device))

    def decode_arrays(z: np.ndarray) -> np.ndarray:
        return decode(torch.from_numpy(z)).float().cpu().numpy()

    def draw(n: int, rng: RandomSource, digits: torch.Tensor | None = None) -> torch.Tensor:
        digits = cycled_digits(n) if digits is None else digits
        if guide is not None:
            _, images = guided_digits(prior, digits.numpy(), rng, decode_arrays, guide, temperature)
            return torch.from_numpy(images).to(device)
        return decode(torch.from_numpy(prior.sample_digits(digits.numpy(), rng, temperature)))

    return draw


def cycled_digits(n: int) -> torch.Tensor:
    return torch.arange(n) % 10


@torch.inference_mode()
def draw_samples(
    sampler: Sampler,
    n: int,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = True,
    desc: str = "samples",
) -> torch.Tensor:
    """n images on the CPU from one generator seeded once: the same seed, the same images."""
    generator = TorchCompatibleGenerator(seed)
    batches = []
    with progress_bar(total=n, desc=desc, unit="image", enabled=progress) as bar:
        for i in range(0, n, batch_size):
            batches.append(sampler(min(batch_size, n - i), generator).cpu())
            bar.update(len(batches[-1]))
    return torch.cat(batches)


def sample_quality(
    judge: SampleJudge,
    sampler: Sampler,
    n: int = 10_000,
    seed: int = 0,
    labels: torch.Tensor | None = None,
    progress: bool = True,
    desc: str = "samples",
) -> dict:
    """Scores n seeded samples; `labels` (the digit each was drawn for) adds per-digit accuracy."""
    started = time.perf_counter()
    result = judge.score(draw_samples(sampler, n, seed, progress=progress, desc=desc), labels)
    result["seed"] = seed
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def real_digit_quality(judge: SampleJudge, test: Split, train: Split, n: int = 10_000) -> dict:
    """The same scores for real digits, the ceiling samples are read against: the test digits'
    inception score, confident fraction and per-digit accuracy (the classifier's own test
    accuracy), and the Frechet distance, precision and recall of n training digits against the
    test set (0 and 1 for the test set itself, so training digits give what a perfect sampler
    would reach)."""
    test_scores = judge.score(to_model_input(test.images), test.labels, with_precision_recall=False)
    del test_scores["fid"]
    train_scores = judge.score(to_model_input(train.images[:n]))
    return {
        "test_digits": test_scores,
        "train_digits_fid": train_scores["fid"],
        **{f"train_digits_{key}": train_scores[key] for key in ("precision", "recall")},
        "train_digits": n,
    }


@torch.inference_mode()
def reconstruction_quality(judge: SampleJudge, model: ConvVAE, train: Split, n: int) -> dict:
    """The same scores for the reconstructions of n training digits, decoded from their posterior
    means: the most any prior can reach with this decoder, since a prior can at most put its
    draws where the encodings are. Samples near it call for a better decoder, not a better prior."""
    device = next(model.parameters()).device
    x = to_model_input(train.images[:n])
    images = torch.cat(
        [model.decode(model.encode(chunk.to(device))[0]).cpu() for chunk in x.split(1000)]
    )
    return {"images": len(images), **judge.score(images)}


def prior_sample_quality(
    judge: SampleJudge, model: ConvVAE, prior: Prior, args: argparse.Namespace
) -> dict[str, dict]:
    """Scores samples from the checkpoint's prior; with a learned prior also N(0, I)'s from the
    same seed, and, when it has per-digit mixtures, digits drawn on request (per-digit accuracy)."""
    n, seed, temperature = args.samples, args.sample_seed, args.temperature
    progress = not args.no_progress
    draw = prior_sampler(model, prior, temperature)
    out = {
        "sample_quality": {
            "prior": prior.name,
            "temperature": temperature,
            **sample_quality(judge, draw, n, seed, progress=progress, desc=f"{prior.name} prior"),
        }
    }
    if isinstance(prior, MixturePrior):
        standard = standard_normal_sampler(model, temperature)
        out["sample_quality_standard_prior"] = {
            "prior": "standard",
            "temperature": temperature,
            **sample_quality(judge, standard, n, seed, progress=progress, desc="N(0, I)"),
        }
        if prior.digits() == list(range(10)):
            n_digits = n - n % 10
            guide = load_digit_guide(args.digit_guide, args.digit_candidates)
            # As the service draws them (guided when it has a guide), and without the guide.
            variants = {"conditional_sample_quality": guide}
            if guide is not None:
                variants["conditional_sample_quality_unguided"] = None
            for key, used in variants.items():
                out[key] = {
                    "prior": prior.name,
                    "temperature": temperature,
                    "guide": None if used is None else used.describe(),
                    **sample_quality(
                        judge,
                        digit_sampler(model, prior, temperature, used),
                        n_digits,
                        seed,
                        labels=cycled_digits(n_digits),
                        progress=progress,
                        desc="chosen digits" + (" (guided)" if used is not None else ""),
                    ),
                }
    return out


def load_digit_guide(path: str | None, candidates: int) -> DigitGuide | None:
    """The service's guide classifier for digit draws; None (unguided) for no path."""
    if not path:
        return None
    try:
        return load_guide(path, candidates)
    except ClassifierError as exc:
        raise SystemExit(f"vae-eval: {exc}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vae-eval", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--k", type=int, default=1000, help="importance samples per digit (0: skip)")
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N test digits")
    p.add_argument("--seed", type=int, default=0, help="seed of the test-set binarization")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument(
        "--max-decodes",
        type=int,
        default=None,
        help=f"decoder batch bound (default: {MAX_DECODES['cuda']} on CUDA, "
        f"{MAX_DECODES['cpu']} on the CPU)",
    )
    p.add_argument(
        "--prior",
        choices=("checkpoint", "standard"),
        default="checkpoint",
        help="p(z) for the ELBO and NLL: the checkpoint's own (N(0, I) if it has none) or N(0, I)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the metrics here")
    p.add_argument("--out-dir", type=Path, default=None, help="write sample/recon grids here")
    p.add_argument(
        "--samples",
        type=int,
        default=10_000,
        help="prior samples scored by the MNIST classifier (0: skip sample quality)",
    )
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the scored samples")
    p.add_argument("--temperature", type=float, default=1.0, help="prior temperature of samples")
    p.add_argument(
        "--classifier",
        type=Path,
        default=DEFAULT_CLASSIFIER,
        help="MNIST classifier that scores samples (python -m training.classifier trains one)",
    )
    p.add_argument(
        "--digit-guide",
        default=str(GUIDE_PATH),
        help="the service's guide for chosen digits (VAE_DIGIT_GUIDE); '' scores them unguided",
    )
    p.add_argument(
        "--digit-candidates",
        type=int,
        default=DEFAULT_CANDIDATES,
        help="candidates per chosen digit the guide may try (VAE_DIGIT_CANDIDATES)",
    )
    p.add_argument(
        "--update-checkpoint",
        action="store_true",
        help="store the metrics in the checkpoint's metadata (atomic rewrite)",
    )
    add_progress_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    try:
        model, metadata, prior = load_checkpoint_and_prior(args.checkpoint, device)
    except CheckpointError as exc:
        print(f"vae-eval: {exc}", file=sys.stderr)
        return 2
    if args.prior == "standard":
        prior = StandardNormal(model.latent_dim)
    dataset = metadata.get("dataset", {}).get("name", "mnist")
    test = load_split(args.data_dir, dataset, train=False)
    metrics = evaluate(
        model,
        test.images,
        args.k,
        args.limit,
        args.seed,
        args.max_decodes or MAX_DECODES.get(device.type, MAX_DECODES["cpu"]),
        prior=prior,
        progress=not args.no_progress,
    )
    metrics["prior"] = prior.name
    metrics["device"] = str(device)
    if args.samples > 0 and dataset == "mnist":
        try:
            classifier, classifier_meta = load_classifier(args.classifier, device)
        except ClassifierError as exc:
            print(f"vae-eval: {exc}", file=sys.stderr)
            return 2
        judge = SampleJudge.from_test_set(classifier, test.images)
        metrics.update(prior_sample_quality(judge, model, prior, args))
        train = load_split(args.data_dir, dataset, train=True)
        metrics["sample_quality_real"] = {
            **real_digit_quality(judge, test, train, args.samples),
            "classifier": str(args.classifier),
            "classifier_test_accuracy": classifier_meta.get("test_accuracy"),
        }
        metrics["reconstruction_quality"] = reconstruction_quality(
            judge, model, train, args.samples
        )
    print_record(metrics, args.json)
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        save_sample_grid(model, args.out_dir / "samples.png", prior=prior)
        if isinstance(prior, MixturePrior):
            save_sample_grid(model, args.out_dir / "samples-standard-prior.png")
            if prior.digits() == list(range(10)):
                guide = load_digit_guide(args.digit_guide, args.digit_candidates)
                save_digit_grid(model, prior, args.out_dir / "digits.png", guide=guide)
        save_reconstruction_grid(
            model, to_model_input(test.images[:32]).to(device), args.out_dir / "reconstructions.png"
        )
    if args.update_checkpoint:
        payload = read_checkpoint(args.checkpoint)
        meta = {**payload["metadata"]}
        meta["metrics"] = {**meta.get("metrics", {}), **metrics}
        save_checkpoint(
            args.checkpoint,
            model_from_payload(payload),
            meta,
            payload.get("train_state"),
            prior=payload.get("prior"),  # the rewrite keeps the learned prior
            typicality=payload.get("typicality"),  # and the calibration made with it
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
