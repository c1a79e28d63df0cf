"""Do the VAE's samples look like digits? Scores from a held-out MNIST classifier.

Likelihood says little about samples: a model can reconstruct well and still draw blobs where
its prior puts mass that no digit encodes. So samples are judged the way image generators are,
by a classifier trained on real digits (`training/classifier.py`):

- **inception score** exp(E_x KL(p(y|x) || p(y))): high when each sample is one clear digit and
  all ten digits appear evenly (at most 10; real MNIST test digits score about 9.5-9.9);
- **confident fraction**: the share of samples whose top class has probability >= 0.9;
- **Frechet distance** between Gaussians fitted to the classifier's penultimate features of the
  samples and of the real test digits (FID, Heusel et al. 2017, in an MNIST feature space);
- **k-NN precision and recall** (Kynkaanniemi et al. 2019, k = 3) in the same feature space:
  precision is the share of samples that fall inside the real digits' manifold (the union of
  balls around each test digit reaching its 3rd nearest test digit), recall the share of test
  digits inside the samples' manifold. The Frechet distance mixes the two; these separate
  fidelity from diversity, so samples that are clean but narrower than the data show as a high
  precision with a lower recall;
- **per-digit accuracy**: for samples drawn for a chosen digit, how often the classifier agrees.

The metric functions take plain tensors; `SampleJudge` holds the classifier and the test set's
feature statistics so that any batch of sampled images (any prior, any sampler) is scored the
same way: `SampleJudge.from_test_set(classifier, test.images).score(images)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from training.classifier import DigitClassifier, classify
from training.data import to_model_input

CONFIDENCE_THRESHOLD = 0.9
NEAREST_K = 3  # Kynkaanniemi et al. 2019's choice
DISTANCE_CHUNK = 1000  # rows of the distance matrix at a time: 1000 x 10,000 float64 is 80 MB


def inception_score(probs: torch.Tensor) -> float:
    """exp(mean_x KL(p(y|x) || p(y))) over the whole set, p(y) the mean prediction.

    1 when every prediction is the same distribution, the number of classes when predictions
    are one-hot and the classes are balanced. Computed in float64; 0 * log 0 counts as 0.
    """
    p = probs.double()
    marginal = p.mean(dim=0, keepdim=True)
    kl = (torch.special.xlogy(p, p) - torch.special.xlogy(p, marginal)).sum(dim=1)
    return math.exp(kl.mean().item())


def confident_fraction(probs: torch.Tensor, threshold: float = CONFIDENCE_THRESHOLD) -> float:
    """Share of rows whose largest class probability is >= threshold."""
    return (probs.max(dim=1).values >= threshold).double().mean().item()


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], in float64."""
    f = features.double()
    return f.mean(dim=0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix (eigenvalues clamped at 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance_from_stats(
    mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor
) -> float:
    """||mu_a - mu_b||^2 + Tr(A + B - 2 (A B)^(1/2)), the squared 2-Wasserstein distance between
    N(mu_a, A) and N(mu_b, B).

    Tr (A B)^(1/2) is the sum of the square roots of the eigenvalues of A B, which are those of the
    symmetric PSD matrix A^(1/2) B A^(1/2): two symmetric eigendecompositions, no general matrix
    square root (scipy's sqrtm) and no complex round-off to discard.
    """
    mu_a, mu_b, cov_a, cov_b = (t.double() for t in (mu_a, mu_b, cov_a, cov_b))
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return max(distance.item(), 0.0)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N_a, D] and [N_b, D]."""
    return frechet_distance_from_stats(*gaussian_stats(features_a), *gaussian_stats(features_b))


def knn_radii(features: torch.Tensor, k: int = NEAREST_K) -> torch.Tensor:
    """Per row of features [N, D]: the distance to its k-th nearest other row (the row itself,
    at distance 0, is the 0th), in float64."""
    f = features.double()
    radii = [
        torch.cdist(chunk, f).topk(k + 1, dim=1, largest=False).values[:, k]
        for chunk in f.split(DISTANCE_CHUNK)
    ]
    return torch.cat(radii)


def inside_manifold(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor
) -> torch.Tensor:
    """Mask [N_q]: whether each query lies within radii[j] of some support row j."""
    s = support.double()
    inside = [
        (torch.cdist(chunk, s) <= radii).any(dim=1)
        for chunk in queries.double().split(DISTANCE_CHUNK)
    ]
    return torch.cat(inside)


def precision_recall(
    real: torch.Tensor,
    generated: torch.Tensor,
    k: int = NEAREST_K,
    real_radii: torch.Tensor | None = None,
) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of `generated` against `real`
    features. Written with chunked `torch.cdist` rather than taken from the `prdc` package,
    which builds the full N x N matrices in numpy (2.4 GB at 10,000 x 10,000, three times)."""
    if real_radii is None:
        real_radii = knn_radii(real, k)
    precision = inside_manifold(generated, real, real_radii).double().mean().item()
    recall = inside_manifold(real, generated, knn_radii(generated, k)).double().mean().item()
    return {"precision": precision, "recall": recall}


def per_digit_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """For each digit present in labels: the share of its rows whose argmax is that digit."""
    labels = labels.to(probs.device).long()
    correct = probs.argmax(dim=1) == labels
    return {
        int(d): correct[labels == d].double().mean().item() for d in torch.unique(labels).tolist()
    }


@dataclass
class SampleJudge:
    """A classifier plus the reference statistics of real test digits in its feature space
    (with the features themselves, precision and recall are scored too)."""

    classifier: DigitClassifier
    reference_mu: torch.Tensor
    reference_cov: torch.Tensor
    reference_features: torch.Tensor | None = None
    reference_radii: torch.Tensor | None = None

    @classmethod
    def from_test_set(
        cls, classifier: DigitClassifier, test_images_u8: torch.Tensor
    ) -> SampleJudge:
        """test_images_u8: MNIST's uint8 [N, 28, 28] test digits, the FID reference."""
        _, features = classify(classifier, to_model_input(test_images_u8))
        return cls(classifier, *gaussian_stats(features), features, knn_radii(features))

    def score(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        with_precision_recall: bool = True,
    ) -> dict:
        """images: [N, 1, 32, 32] in [0, 1] (what `ConvVAE.decode` returns). With labels (the
        digit each image was drawn for), adds the accuracy per digit and over all."""
        probs, features = classify(self.classifier, images)
        result: dict = {
            "images": len(images),
            "inception_score": round(inception_score(probs), 4),
            "confident_fraction": round(confident_fraction(probs), 4),
            "fid": round(
                frechet_distance_from_stats(
                    *gaussian_stats(features), self.reference_mu, self.reference_cov
                ),
                4,
            ),
        }
        if with_precision_recall and self.reference_features is not None:
            scores = precision_recall(
                self.reference_features, features, real_radii=self.reference_radii
            )
            result.update({name: round(value, 4) for name, value in scores.items()})
            result["nearest_k"] = NEAREST_K
        if labels is not None:
            labels = labels.cpu().long()
            result["accuracy"] = round((probs.argmax(1) == labels).double().mean().item(), 4)
            result["per_digit_accuracy"] = {
                str(d): round(a, 4) for d, a in per_digit_accuracy(probs, labels).items()
            }
        return result
