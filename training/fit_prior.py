"""`vae-fit-prior`: fit a Gaussian-mixture prior to a trained VAE's encodings and store it.

No retraining: the VAE's weights stay exactly as they are. The training digits are encoded to their
posterior means; a mixture fitted to those by EM is the "ex-post" prior of Ghosh et al. (2020). Per
digit, a mixture fitted to that digit's encodings lets the service draw a chosen digit. With
`--classifier`, only digits whose reconstruction the classifier assigns confidently to their own
label feed the per-digit mixtures, so ambiguous scrawls do not pull a 4's mixture towards 9s.

A new prior drops the checkpoint's typicality calibration (`models.typicality`), which is only
valid with the prior it was made with: run `vae-calibrate-typicality` after it.

`--search` fits every combination asked for on all but `--holdout` training digits and prints the
held-out log-likelihood of each (nats per latent, higher is better) without writing anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import (
    CheckpointError,
    model_from_payload,
    read_checkpoint,
    save_checkpoint,
)
from models.prior import MixturePrior
from models.progress import add_progress_flag, progress_bar
from models.vae import ConvVAE
from training.classifier import ClassifierError, classify, load_classifier
from training.data import load_split, to_model_input
from training.gmm import fit_gaussian_mixture, merge_labelled, widen
from training.metrics_log import print_record
from training.mixture import GaussianMixture

Classify = Callable[[torch.Tensor], torch.Tensor]  # images [N,1,32,32] -> probabilities [N,10]


@torch.inference_mode()
def posterior_means(model: ConvVAE, images_u8: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """E[z|x] for every image: the encodings the mixture is fitted to."""
    return posteriors(model, images_u8, batch)[0]


@torch.inference_mode()
def posteriors(
    model: ConvVAE, images_u8: torch.Tensor, batch: int = 1000, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) of q(z|x) for every image."""
    chunks = to_model_input(images_u8).split(batch)
    bar = progress_bar(chunks, desc="encoding", unit="batch", enabled=progress)
    parts = [model.encode(c) for c in bar]
    return torch.cat([p[0] for p in parts]).float(), torch.cat([p[1] for p in parts]).float()


@torch.inference_mode()
def confidently_recognised(
    model: ConvVAE,
    mu: torch.Tensor,
    labels: torch.Tensor,
    classify: Classify,
    threshold: float,
    progress: bool = False,
) -> torch.Tensor:
    """Mask of digits whose reconstruction (decoded at the posterior mean) the classifier gives
    to their own label with probability >= threshold."""
    keep = []
    pairs = zip(mu.split(1000), labels.split(1000), strict=True)
    total = -(-len(mu) // 1000)
    for z, y in progress_bar(pairs, total=total, desc="judging", unit="batch", enabled=progress):
        probs = classify(model.decode(z))
        keep.append(probs[torch.arange(len(y)), y] >= threshold)
    return torch.cat(keep)


def fit_pooled(
    mu: torch.Tensor, components: int, covariance: str, reg: float, seed: int
) -> GaussianMixture:
    gen = torch.Generator().manual_seed(seed)
    return fit_gaussian_mixture(mu, components, covariance, generator=gen, reg=reg).mixture


def fit_per_digit(
    mu: torch.Tensor,
    labels: torch.Tensor,
    components: int,
    covariance: str,
    reg: float,
    seed: int,
    class_weights: dict[int, float] | None = None,
    progress: bool = False,
) -> GaussianMixture:
    """One mixture per digit, merged into one labelled mixture weighted by each digit's share."""
    mixtures, counts = {}, {}
    digits = sorted(set(labels.tolist()))
    for digit in progress_bar(digits, desc="EM per digit", unit="digit", enabled=progress):
        own = mu[labels == digit]
        counts[digit] = len(own)
        gen = torch.Generator().manual_seed(seed + digit)
        mixtures[digit] = fit_gaussian_mixture(
            own, min(components, len(own)), covariance, generator=gen, reg=reg
        ).mixture
    return merge_labelled(mixtures, class_weights or {d: float(c) for d, c in counts.items()})


def mean_log_likelihood(mixture: GaussianMixture, z: torch.Tensor) -> float:
    return mixture.log_prob(z.to(mixture.means.dtype)).mean().item()


def build_prior(
    mu: torch.Tensor,
    labels: torch.Tensor,
    args: argparse.Namespace,
    keep: torch.Tensor | None = None,
    logvar: torch.Tensor | None = None,
    progress: bool = False,
) -> MixturePrior:
    """The prior the checkpoint will carry, fitted on (mu, labels); `keep` masks the digits that
    feed the per-digit mixtures (all of them when None). With `logvar` and the per-digit
    mixture, log p(z) widens each digit's components by that digit's mean posterior variance
    (the aggregate posterior), while draws come from the encodings' own spread."""
    shares = {d: float((labels == d).sum()) for d in sorted(set(labels.tolist()))}
    kept = keep if keep is not None else torch.ones(len(mu), dtype=torch.bool)
    classes = fit_per_digit(
        mu[kept],
        labels[kept],
        args.class_components,
        args.covariance,
        args.reg,
        args.seed,
        shares,
        progress,
    )
    draw_from = "mixture"
    if args.mixture == "per-digit":
        mixture = classes
        if logvar is not None:
            noise = torch.stack([logvar[labels == d].exp().mean(0) for d in range(10)])
            mixture = widen(classes, noise[classes.labels])
            draw_from = "classes"
    else:
        mixture = fit_pooled(mu, args.components, args.covariance, args.reg, args.seed)
    config = {
        "fitted_on": "posterior means of the training digits",
        "training_digits": len(mu),
        "mixture": args.mixture,
        "covariance": args.covariance,
        "components": len(mixture.weights),
        "class_components": args.class_components,
        "class_fit_digits": int(kept.sum()),
        "reg": args.reg,
        "seed": args.seed,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.filter_confidence is not None:
        config["class_filter"] = (
            f"reconstruction classified as its label, p >= {args.filter_confidence}"
        )
    if draw_from == "classes":
        config["log_density"] = "per-digit components widened by the mean posterior variance"
    return MixturePrior(
        mixture.to_arrays(),
        classes=classes.to_arrays(),
        accept_threshold=args.accept_threshold,
        config=config,
        draw_from=draw_from,
    )


def search(
    mu: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Held-out log-likelihood of every (covariance, components) asked for, pooled and per digit."""
    fit_mu, val_mu = mu[: -args.holdout], mu[-args.holdout :]
    fit_y = labels[: -args.holdout]
    rows = []
    for covariance in args.search_covariance:
        for components in args.search_components:
            started = time.perf_counter()
            pooled = fit_pooled(fit_mu, components, covariance, args.reg, args.seed)
            rows.append(
                {
                    "mixture": "pooled",
                    "covariance": covariance,
                    "components": components,
                    "heldout_log_likelihood": round(mean_log_likelihood(pooled, val_mu), 3),
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        for per_digit in args.search_class_components:
            started = time.perf_counter()
            classes = fit_per_digit(fit_mu, fit_y, per_digit, covariance, args.reg, args.seed)
            rows.append(
                {
                    "mixture": "per-digit",
                    "covariance": covariance,
                    "components": classes.n_components,
                    "class_components": per_digit,
                    "heldout_log_likelihood": round(mean_log_likelihood(classes, val_mu), 3),
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vae-fit-prior", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="the VAE whose encodings are fitted")
    p.add_argument("--out", type=Path, default=None, help="write here (default: in place)")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument(
        "--mixture",
        choices=("pooled", "per-digit"),
        default="per-digit",
        help="log p(z) and plain sampling: one mixture of all encodings, or the per-digit "
        "mixtures weighted by each digit's share",
    )
    p.add_argument("--components", type=int, default=50, help="pooled mixture size")
    p.add_argument("--class-components", type=int, default=10, help="components per digit")
    p.add_argument("--covariance", choices=("full", "diag"), default="full")
    p.add_argument("--reg", type=float, default=1e-4, help="added to covariance diagonals")
    p.add_argument(
        "--accept-threshold",
        type=float,
        default=0.0,
        help="a digit draw is redrawn unless the per-digit mixtures give it this posterior",
    )
    p.add_argument("--classifier", type=Path, default=None, help="filter the per-digit fits")
    p.add_argument("--filter-confidence", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="fit on the first N training digits")
    p.add_argument("--search", action="store_true", help="compare settings on held-out digits")
    p.add_argument("--holdout", type=int, default=10_000)
    p.add_argument("--search-components", type=int, nargs="*", default=[10, 50, 100])
    p.add_argument("--search-class-components", type=int, nargs="*", default=[3, 10, 20])
    p.add_argument("--search-covariance", nargs="*", default=["full", "diag"])
    p.add_argument("--json", type=Path, default=None, help="write the search or fit record here")
    add_progress_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        payload = read_checkpoint(args.checkpoint)
        model = model_from_payload(payload, source=str(args.checkpoint)).eval()
    except CheckpointError as exc:
        print(f"vae-fit-prior: {exc}", file=sys.stderr)
        return 2
    dataset = payload["metadata"].get("dataset", {}).get("name", "mnist")
    train = load_split(args.data_dir, dataset, train=True)
    if args.limit:
        train = train.subset(args.limit)
    progress = not args.no_progress
    mu, logvar = posteriors(model, train.images, progress=progress)
    if args.search:
        rows = search(mu, train.labels, args)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return 0
    keep = None
    if args.classifier is not None:
        try:
            classifier, _ = load_classifier(args.classifier)
        except ClassifierError as exc:
            print(f"vae-fit-prior: {exc}", file=sys.stderr)
            return 2
        args.filter_confidence = args.filter_confidence or 0.9
        keep = confidently_recognised(
            model,
            mu,
            train.labels,
            lambda images: classify(classifier, images)[0],
            args.filter_confidence,
            progress,
        )
    prior = build_prior(mu, train.labels, args, keep, logvar, progress)
    out = args.out or args.checkpoint
    save_checkpoint(out, model, payload["metadata"], payload.get("train_state"), prior=prior)
    record = {"checkpoint": str(out), **prior.config}
    print_record(record, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
