"""k-NN precision and recall (Kynkaanniemi et al. 2019): fidelity and diversity apart."""

from __future__ import annotations

import json

import pytest
import torch

from training.classifier import classify, load_classifier
from training.data import load_split, to_model_input
from training.evaluate import main as eval_main
from training.sample_quality import SampleJudge, knn_radii, precision_recall


def _cloud(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)) + shift


def test_radii_are_the_distance_to_the_kth_nearest_other_point():
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0], [15.0]])
    # from 7 the others lie at 4 (3), 6 (1), 7 (0) and 8 (15): its 3rd nearest is at 7
    assert knn_radii(points, k=3).tolist() == [7.0, 6.0, 4.0, 7.0, 14.0]


def test_two_draws_of_one_distribution_score_high_on_both():
    scores = precision_recall(_cloud(2000, 0), _cloud(2000, 1))
    assert scores["precision"] > 0.9 and scores["recall"] > 0.9


def test_samples_from_half_the_data_are_precise_but_miss_the_other_half():
    real = _cloud(2000, 0)
    narrow = _cloud(6000, 1)
    narrow = narrow[narrow[:, 0] > 0][:2000]  # only the right half of the cloud
    scores = precision_recall(real, narrow)
    assert scores["precision"] > 0.9
    assert 0.4 < scores["recall"] < 0.7


def test_samples_far_from_the_data_score_zero_precision_and_recall():
    scores = precision_recall(_cloud(500, 0), _cloud(500, 1, shift=50.0))
    assert scores == {"precision": 0.0, "recall": 0.0}


@pytest.fixture(scope="module")
def judge(mnist_test):
    classifier, _ = load_classifier()
    return SampleJudge.from_test_set(classifier, mnist_test.images[:3000])


def test_real_training_digits_are_precise_and_diverse_and_noise_is_neither(judge, mnist_dir):
    train = load_split(mnist_dir, "mnist", train=True)
    real = judge.score(to_model_input(train.images[:3000]))
    noise = judge.score(torch.rand(3000, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert real["precision"] > 0.8 and real["recall"] > 0.8 and real["nearest_k"] == 3
    assert noise["precision"] < 0.01 and noise["recall"] < 0.01


def test_one_digit_only_has_a_low_recall(judge, mnist_dir):
    train = load_split(mnist_dir, "mnist", train=True)
    ones = train.images[train.labels == 1][:3000]
    scores = judge.score(to_model_input(ones))
    assert scores["precision"] > 0.8 and scores["recall"] < 0.25


def test_the_judge_measures_what_the_function_does(judge, mnist_dir, mnist_test):
    train = load_split(mnist_dir, "mnist", train=True)
    images = to_model_input(train.images[:1000])
    _, features = classify(judge.classifier, images)
    _, reference = classify(judge.classifier, to_model_input(mnist_test.images[:3000]))
    expected = precision_recall(reference, features)
    scored = judge.score(images)
    assert scored["precision"] == round(expected["precision"], 4)
    assert scored["recall"] == round(expected["recall"], 4)


@pytest.mark.slow
def test_vae_eval_reports_precision_and_recall_beside_the_frechet_distance(
    tiny_run, mnist_dir, tmp_path
):
    out = tmp_path / "eval.json"
    argv = [str(tiny_run / "model.pt"), "--k", "0", "--limit", "200", "--samples", "600"]
    assert eval_main([*argv, "--data-dir", str(mnist_dir), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    quality, real = metrics["sample_quality"], metrics["sample_quality_real"]
    assert {"fid", "precision", "recall"} <= set(quality)
    assert 0.0 <= quality["precision"] <= 1.0 and 0.0 <= quality["recall"] <= 1.0
    assert real["train_digits_precision"] > quality["precision"]
    assert real["train_digits_recall"] > quality["recall"]
    assert "precision" not in real["test_digits"]  # the test set against itself says nothing
    ceiling = metrics["reconstruction_quality"]  # the decoder's own reconstructions
    assert ceiling["images"] == 600 and 0.0 <= ceiling["recall"] <= 1.0
    assert real["train_digits_recall"] > ceiling["recall"]
