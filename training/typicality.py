"""`vae-calibrate-typicality`: add the "is this a digit?" calibration to a checkpoint.

The model is not changed: its weights, metadata, prior and training state are written back as
they were, with a `typicality` section beside them (`models.typicality`). Two sets of real digits
are used, neither of them the ones its tests and its model card measure the score on:

- the posterior mixture over (mu, logvar) is fitted, two components per digit, to `--fit-digits`
  training digits (a seeded draw; the model trained on them, as the prior was fitted on them);
- the calibration is the first `--calibration-digits` digits of the MNIST *test* set, which the
  model never trained on (nor did the guide): each term's distribution there, and Fisher's
  statistic of each of them, sorted, once over the latent terms alone and once over the guided
  terms (`models.typicality`). The rest of the test set (from digit 5,000 on) is what the score
  is measured on.

The guide is `--digit-guide` (the service's, `models/mnist-digit-guide.pt`; '' for a calibration
without one, which scores on the latent terms alone). The calibration keeps the `PROBE_DIGITS`
calibration digits the guide is least sure of and its probabilities on them, so a server whose
guide reads them otherwise (another network) scores without it.

    vae-calibrate-typicality --checkpoint models/mnist-vae.pt            # in place
    vae-calibrate-typicality --checkpoint in.pt --out out.pt --json calibration.json
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import (
    CheckpointError,
    model_from_payload,
    prior_from_payload,
    read_checkpoint,
    save_checkpoint,
)
from models.classifier import GUIDE_PATH, ClassifierError
from models.digit_guide import DigitGuide, load_guide
from models.prior import Mixture, MixturePrior
from models.progress import add_progress_flag
from models.typicality import (
    DEFAULT_THRESHOLD,
    GUIDED_TERMS,
    LATENT_TERMS,
    TERMS,
    GuideCalibration,
    Typicality,
)
from training.data import load_split, to_model_input
from training.fit_prior import posteriors
from training.gmm import fit_gaussian_mixture, merge_labelled
from training.metrics_log import print_record

CALIBRATION_DIGITS = 5000  # test[0:5000]; test[5000:] is where the score is measured
FIT_DIGITS = 20_000
COMPONENTS_PER_DIGIT = 2
SEED = 0
PROBE_DIGITS = 8  # calibration digits kept with the guide's probabilities on them


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="vae-calibrate-typicality", description=__doc__.splitlines()[0]
    )
    p.add_argument("--checkpoint", type=Path, default=Path("models/mnist-vae.pt"))
    p.add_argument("--out", type=Path, default=None, help="default: rewrite --checkpoint")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument(
        "--digit-guide", default=str(GUIDE_PATH), help="the guide classifier ('' for none)"
    )
    p.add_argument("--calibration-digits", type=int, default=CALIBRATION_DIGITS)
    p.add_argument("--fit-digits", type=int, default=FIT_DIGITS)
    p.add_argument("--components", type=int, default=COMPONENTS_PER_DIGIT, help="per digit")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--json", type=Path, default=None, help="also write what was done here")
    add_progress_flag(p)
    return p.parse_args(argv)


def fit_posterior_mixture(
    mu: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor, components: int, seed: int
) -> Mixture:
    """Per digit, a full-covariance mixture of `components` over [mu, logvar]; merged, labelled,
    weighted by how often each digit occurs, stored in float32."""
    x = torch.cat([mu, logvar], dim=1).double()
    generator = torch.Generator().manual_seed(seed)
    fits = {
        d: fit_gaussian_mixture(x[labels == d], components, generator=generator).mixture
        for d in range(10)
    }
    share = {d: float((labels == d).double().mean()) for d in range(10)}
    return merge_labelled(fits, share).to_arrays()


def calibrate(
    model,
    prior: MixturePrior,
    fit_images: torch.Tensor,
    fit_labels: torch.Tensor,
    calibration_images: torch.Tensor,
    guide: DigitGuide | None = None,
    components: int = COMPONENTS_PER_DIGIT,
    seed: int = SEED,
    progress: bool = False,
    info: dict | None = None,
) -> Typicality:
    """The calibration of `model` with its `prior` (and `guide`, when given): the posterior
    mixture fitted to `fit_images`, the references from `calibration_images` (uint8
    [N, 28, 28] each)."""
    mu, logvar = posteriors(model, fit_images, progress=progress)
    joint = fit_posterior_mixture(mu, logvar, fit_labels, components, seed)
    cal_mu, cal_logvar = posteriors(model, calibration_images, progress=progress)
    n = len(calibration_images)
    names = TERMS if guide is not None else LATENT_TERMS
    placeholder = Typicality(prior, joint, np.zeros((len(LATENT_TERMS), n)), np.zeros(n))
    x = to_model_input(calibration_images).numpy()
    probabilities = guide.probabilities(x) if guide is not None else None
    terms = placeholder.terms(cal_mu.numpy(), cal_logvar.numpy(), probabilities, names)
    term_references = np.sort(terms, axis=0).T.copy()
    scoring = Typicality(prior, joint, term_references[: len(LATENT_TERMS)], np.zeros(n))
    latent = [names.index(name) for name in LATENT_TERMS]
    reference = np.sort(scoring.statistic(terms[:, latent], LATENT_TERMS))
    guided = None
    if guide is not None:
        # the probe: the digits the guide is least sure of, where another network differs most
        probe = np.sort(np.argsort(probabilities.max(axis=1), kind="stable")[:PROBE_DIGITS])
        probed = GuideCalibration(reference, x[probe], probabilities[probe])
        scoring = Typicality(prior, joint, term_references, reference, probed)
        chosen = [names.index(name) for name in GUIDED_TERMS]
        guided_reference = np.sort(scoring.statistic(terms[:, chosen], GUIDED_TERMS))
        guided = GuideCalibration(guided_reference, x[probe], probabilities[probe])
    return Typicality(prior, joint, term_references, reference, guided, dict(info or {}))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        payload = read_checkpoint(args.checkpoint)
        model = model_from_payload(payload, source=str(args.checkpoint)).eval()
        prior = prior_from_payload(payload, model.latent_dim, source=str(args.checkpoint))
    except CheckpointError as exc:
        print(f"vae-calibrate-typicality: {exc}", file=sys.stderr)
        return 2
    if not isinstance(prior, MixturePrior) or prior.classes is None:
        print(
            "vae-calibrate-typicality: the score needs a learned prior with per-digit mixtures; "
            "fit one first with vae-fit-prior",
            file=sys.stderr,
        )
        return 2
    guide = None
    if args.digit_guide:
        try:
            guide = load_guide(args.digit_guide)
        except ClassifierError as exc:
            print(f"vae-calibrate-typicality: --digit-guide: {exc}", file=sys.stderr)
            return 2
    train = load_split(args.data_dir, "mnist", train=True)
    test = load_split(args.data_dir, "mnist", train=False)
    if not 1 <= args.calibration_digits < len(test):
        print("vae-calibrate-typicality: --calibration-digits out of range", file=sys.stderr)
        return 2
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    pick = pick[: args.fit_digits].sort().values
    info = {
        "calibration": f"MNIST test digits 0-{args.calibration_digits - 1} (never trained on)",
        "posterior_mixture": (
            f"{args.components} full-covariance components per digit over (mu, logvar), fitted "
            f"to {len(pick)} training digits (seed {args.seed})"
        ),
        "digit_guide": Path(args.digit_guide).name if guide is not None else "none",
        "default_threshold": DEFAULT_THRESHOLD,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    torch.manual_seed(args.seed)
    typicality = calibrate(
        model,
        prior,
        train.images[pick],
        train.labels[pick],
        test.images[: args.calibration_digits],
        guide,
        args.components,
        args.seed,
        progress=not args.no_progress,
        info=info,
    )
    out = args.out or args.checkpoint
    save_checkpoint(
        out,
        model,
        payload["metadata"],
        payload.get("train_state"),
        prior=payload.get("prior"),
        typicality=typicality.to_dict(),
    )
    record = {"checkpoint": str(out), **info}
    references = {"latent": typicality.reference}
    if typicality.guided is not None:
        references["guided"] = typicality.guided.reference
    record["reference_statistic_percentiles"] = {
        name: {str(q): float(np.quantile(values, q / 100)) for q in (1, 50, 99)}
        for name, values in references.items()
    }
    print_record(record, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
