"""Issue 30: which score tells a digit from what is not one? AUROC per kind, for each candidate.

    python bench/typicality_eval.py [--checkpoint models/mnist-vae.pt] [--n 400] [--json out.json]

Every upload goes through the service's own normalisation (`normalize_upload`), so each score is
taken on what the model saw; uploads it refuses (422: only lines across the picture) never get a
score and are counted apart. Digits: MNIST test digits 5000 on (the calibration used 0-4999) and
phone photos of them (`harness/photo_scenes.py`); the rest: `harness/not_digits.py`. Each candidate
is oriented so that higher means less digit-like; AUROC 1.0 ranks every non-digit above every
digit. The last columns are the share of MNIST and photo digits each candidate flags at the
threshold that flags 1 % of the calibration digits. CPU-heavy: run it under `nice`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from app.errors import ImageError  # noqa: E402
from app.images.normalise import normalize_upload  # noqa: E402
from harness import not_digits as nd  # noqa: E402
from models.checkpoint import load_checkpoint_parts  # noqa: E402
from models.digit_guide import load_guide  # noqa: E402
from models.likelihood import bernoulli_nll, gaussian_kl  # noqa: E402
from models.typicality import TERMS, Typicality  # noqa: E402
from training.data import load_split, to_model_input  # noqa: E402

LN2 = float(np.log(2))
SHIPPED = "shipped: Fisher of the 3 latent terms + guide"


def png_bits(x: np.ndarray) -> float:
    """The 28x28 field as an 8-bit PNG, in bits: the input-complexity term (Serra et al. 2020)."""
    pixels = (np.clip(x[0, 2:-2, 2:-2], 0, 1) * 255 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=9)
    return 8.0 * len(buffer.getvalue())


@torch.inference_mode()
def features(model, typicality: Typicality, guide, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every candidate's raw parts for inputs x [N, 1, 32, 32], and the served score with the
    guide (as the service binds it) and without one."""
    latent = dataclasses.replace(typicality, guide=None)
    served = typicality.with_guide(guide.probabilities)
    out: dict[str, list[np.ndarray]] = {}
    for rows in np.array_split(x, max(1, len(x) // 500)):
        xt = torch.from_numpy(rows)
        mu, logvar = model.encode(xt)
        logits = model.decode_logits(mu)
        nll = bernoulli_nll(logits, xt).numpy()
        kl = gaussian_kl(mu, logvar).numpy()
        probabilities = guide.probabilities(rows)
        terms = typicality.terms(mu.numpy(), logvar.numpy(), probabilities, TERMS)
        parts = {
            "neg_elbo": nll + kl,
            "nll": nll,
            "prior_density": terms[:, 0],
            "posterior_density": terms[:, 1],
            "class_confidence": terms[:, 2],
            "guide": terms[:, 3],
            "png_bits": np.array([png_bits(r) for r in rows]),
            "shipped": 1.0 - served.score(rows, mu.numpy(), logvar.numpy()),
            "without_guide": 1.0 - latent.score(rows, mu.numpy(), logvar.numpy()),
        }
        for key, value in parts.items():
            out.setdefault(key, []).append(np.asarray(value, np.float64))
    return {k: np.concatenate(v) for k, v in out.items()}


def tail_p(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    ref = np.sort(reference)
    return (len(ref) - np.searchsorted(ref, values, side="left") + 1.0) / (len(ref) + 1.0)


def candidates(f: dict[str, np.ndarray], cal: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """name -> score (higher: less digit-like) for one set `f`, with `cal` the calibration's."""

    def fisher(*names: str) -> np.ndarray:
        return -sum(np.log(tail_p(cal[n], f[n])) for n in names)

    return {
        "-ELBO": f["neg_elbo"],
        "reconstruction NLL": f["nll"],
        "-log p(mu), learned prior": f["prior_density"],
        "-log p(mu, logvar), per digit": f["posterior_density"],
        "1 - p(class | mu)": f["class_confidence"],
        "1 - digit guide confidence": f["guide"],
        "-ELBO - PNG bits (complexity)": f["neg_elbo"] / LN2 - f["png_bits"],
        "Fisher: p(mu) + guide": fisher("prior_density", "guide"),
        "Fisher: p(mu) + -ELBO": fisher("prior_density", "neg_elbo"),
        "Fisher: p(mu) + p(mu,logvar)": fisher("prior_density", "posterior_density"),
        "Fisher: p(mu) + p(mu,logvar) + guide": fisher(
            "prior_density", "posterior_density", "guide"
        ),
        "Fisher: 3 latent terms + NLL": fisher(
            "prior_density", "posterior_density", "class_confidence", "nll"
        ),
        "shipped, no guide: Fisher of the 3 latent terms": f["without_guide"],
        SHIPPED: f["shipped"],
    }


def normalised(uploads: list[bytes]) -> tuple[np.ndarray, int]:
    xs, refused = [], 0
    for data in uploads:
        try:
            xs.append(normalize_upload(data))
        except ImageError:
            refused += 1
    return np.stack(xs), refused


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=REPO / "models" / "mnist-vae.pt")
    p.add_argument("--guide", type=Path, default=REPO / "models" / "mnist-digit-guide.pt")
    p.add_argument("--data-dir", type=Path, default=REPO / "data")
    p.add_argument("--n", type=int, default=400, help="uploads of each kind")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    model, _, prior, stored = load_checkpoint_parts(args.checkpoint)
    if stored is None:
        print(f"{args.checkpoint} has no typicality calibration (vae-calibrate-typicality)")
        return 2
    typicality = Typicality.from_dict(stored, prior)
    guide = load_guide(args.guide)
    mnist = load_split(args.data_dir, "mnist", train=False).images
    fashion = load_split(args.data_dir, "fashion-mnist", train=False).images.numpy()
    calibration = to_model_input(mnist[: nd.MEASURED_FROM]).numpy()
    more = {"mnist": 2 * args.n, "fashion": 2 * args.n}
    uploads = nd.acceptance_uploads(mnist.numpy(), fashion, args.n, more)
    sets, refused = {}, {}
    for kind, data in uploads.items():
        sets[kind], refused[kind] = normalised(data)
    cal = features(model, typicality, guide, calibration)
    scores = {
        kind: candidates(features(model, typicality, guide, x), cal) for kind, x in sets.items()
    }
    cal_scores = candidates(cal, cal)
    kinds = nd.OTHER_KINDS
    rows = []
    for name in cal_scores:
        digits = np.concatenate([scores[k][name] for k in nd.DIGIT_KINDS])
        others = np.concatenate([scores[k][name] for k in kinds])
        cut = np.quantile(cal_scores[name], 0.99)
        rows.append(
            {
                "score": name,
                **{k: nd.auroc(scores[k][name], digits) for k in kinds},
                "all": nd.auroc(others, digits),
                "mnist_flagged_pct": 100 * float((scores["mnist"][name] > cut).mean()),
                "photo_flagged_pct": 100 * float((scores["photo"][name] > cut).mean()),
            }
        )
    head = f"| score | {' | '.join(kinds)} | all | MNIST flagged % | photos flagged % |"
    print(head)
    print("|" + "---|" * (len(kinds) + 4))
    for row in rows:
        cells = [f"{row[k]:.3f}" for k in (*kinds, "all")]
        cells += [f"{row['mnist_flagged_pct']:.1f}", f"{row['photo_flagged_pct']:.1f}"]
        print(f"| {row['score']} | {' | '.join(cells)} |")
    counts = {k: len(v) for k, v in sets.items()}
    print(f"\nscored per kind: {counts}; refused by the normaliser (422): {refused}")
    shipped = SHIPPED
    flagged = {k: 100 * float((1.0 - scores[k][shipped] < 0.01).mean()) for k in nd.DIGIT_KINDS}
    print(
        f"shipped score at VAE_DIGIT_THRESHOLD 0.01: MNIST flagged {flagged['mnist']:.2f} %, "
        f"photos flagged {flagged['photo']:.2f} %"
    )
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "scored": counts, "refused": refused}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
