"""Toy metrics: Frechet distance vs direct formulas, diversity and prompt accuracy by construction,
torchmetrics agreement, and the cached evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from wadi.metrics.toy import (
    ToyEvaluator,
    ToyFeatureExtractor,
    diversity,
    feature_statistics,
    frechet_distance,
    prompt_accuracy,
    toy_fid,
)
from wadi.toy.classifier import ToyClassifier
from wadi.toy.world import parse_caption, render, sample_scene, stack_labels, toy_prompts


def _random_spd(d, gen):
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_matches_direct_formula():
    gen = torch.Generator().manual_seed(0)
    for d in (1, 3, 8):
        mu1, mu2 = (torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(2))
        s1, s2 = _random_spd(d, gen), _random_spd(d, gen)
        covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
        direct = float(((mu1 - mu2) ** 2).sum()) + np.trace(s1.numpy() + s2.numpy() - 2 * covmean)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-8, abs=1e-10)


def test_frechet_distance_diagonal_closed_form():
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 4.0, 1.0])
    mu1, mu2 = torch.zeros(3), torch.tensor([1.0, 0.0, 2.0])
    expected = 5.0 + sum((math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in zip(a.tolist(), b.tolist()))
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="expected"):
        frechet_distance(mu1, torch.diag(a), mu2[:2], torch.diag(b)[:2, :2])


def test_toy_fid_zero_on_itself_and_grows_with_shift():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(500, 6, generator=gen)
    assert toy_fid(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([0.5, 0, 0, 0, 0, 1.0])
    assert toy_fid(x + shift, x) == pytest.approx(1.25, rel=1e-6)  # same covariance: |shift|^2
    y = torch.randn(500, 6, generator=gen)
    fids = [toy_fid(y + k * 0.5, x) for k in range(4)]
    assert fids == sorted(fids) and fids[0] < 0.2 < fids[1]


def test_diversity_on_known_distances():
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [7.0, 7.0]])
    groups = torch.tensor([0, 0, 1, 1, 1, 2])  # group 2 has one image: no pairs, skipped
    expected = (5.0 + (1 + 1 + math.sqrt(2)) / 3) / 2
    assert diversity(features, groups) == pytest.approx(expected, rel=1e-9)
    assert diversity(torch.ones(4, 3), torch.tensor([0, 0, 1, 1])) == 0.0  # collapsed prompts
    with pytest.raises(ValueError, match="two or more"):
        diversity(features[:2], torch.tensor([0, 1]))


class FakeClassifier:
    """Predicts the attributes of a fixed list of captions, whatever the images are."""

    def __init__(self, captions):
        self.labels = stack_labels([parse_caption(c) for c in captions])

    def predict(self, images):
        return {k: v[: images.shape[0]] for k, v in self.labels.items()}


def test_prompt_accuracy_right_and_wrong_by_construction():
    prompts = toy_prompts(8, seed=5)
    images = torch.zeros(8, 3, 64, 64)
    assert prompt_accuracy(FakeClassifier(prompts), images, prompts) == 1.0
    wrong = prompts[:5] + toy_prompts(3, seed=6)  # the classifier "sees" other scenes in the last three
    differs = sum(parse_caption(a).attributes != parse_caption(b).attributes for a, b in zip(prompts, wrong))
    assert prompt_accuracy(FakeClassifier(wrong), images, prompts) == pytest.approx(1 - differs / 8)
    assert differs == 3
    with pytest.raises(ValueError, match="'a purple blob'"):
        prompt_accuracy(FakeClassifier(prompts), images, prompts[:7] + ["a purple blob"])


@pytest.fixture(scope="module")
def small_classifier():
    torch.manual_seed(0)
    return ToyClassifier(feature_dim=16).eval()


def test_torchmetrics_fid_with_toy_features_agrees(small_classifier):
    real = render([sample_scene(s) for s in range(200)])
    fake = render([sample_scene(s) for s in range(1000, 1150)]) * 0.8  # a dimmer, different set
    extractor = ToyFeatureExtractor(small_classifier)
    metric = FrechetInceptionDistance(feature=extractor, normalize=True)
    metric.set_dtype(torch.float64)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = toy_fid(extractor(fake), extractor(real))
    assert expected > 1e-3
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-4)
    as_uint8 = ((real[:4] + 1) * 127.5).round().to(torch.uint8)
    assert torch.allclose(extractor(as_uint8), extractor(real[:4]), atol=1e-2)


def test_evaluator_caches_real_statistics_and_ranks_sets(small_classifier):
    evaluator = ToyEvaluator(small_classifier, n_real=300, batch_size=128)
    mu, sigma = feature_statistics(evaluator.features(render([sample_scene(2**31 + s) for s in range(8)])))
    assert evaluator.real_mu.shape == mu.shape and evaluator.real_sigma.shape == sigma.shape
    prompts = toy_prompts(200, seed=9, split="heldout")
    real = render([parse_caption(p) for p in prompts])
    noise = torch.rand(200, 3, 64, 64) * 2 - 1
    groups = torch.arange(200) // 4
    good, bad = evaluator(real, prompts, groups), evaluator(noise, prompts)
    assert set(good) == {"fid", "prompt_accuracy", "diversity"} and set(bad) == {"fid", "prompt_accuracy"}
    assert good["fid"] < bad["fid"]
    assert 0.0 <= good["prompt_accuracy"] <= 1.0 and good["diversity"] > 0
