"""Precision / recall (Kynkaanniemi et al. 2019) on constructed sets with answers known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wadi.metrics.prdc import knn_radii, manifold_coverage, precision_recall


def test_knn_radii_by_hand():
    pts = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    # distances from 0: 1, 3, 7; from 1: 1, 2, 6; from 3: 2, 3, 4; from 7: 4, 6, 7
    assert knn_radii(pts, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(pts, k=3).tolist() == [7.0, 6.0, 4.0, 7.0]
    with pytest.raises(ValueError, match="k \\+ 1"):
        knn_radii(pts, k=4)


def test_knn_radii_match_brute_force():
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = torch.cdist(x, x) + torch.diag(torch.full((50,), float("inf"), dtype=torch.float64))
    expected = d.sort(dim=1).values[:, 2]  # 3rd nearest other point
    torch.testing.assert_close(knn_radii(x, k=3, batch_size=7), expected)


def test_identical_sets_give_one_and_far_sets_zero():
    x = np.random.default_rng(0).standard_normal((200, 16))
    assert precision_recall(x, x, k=3) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)


def test_small_example_by_hand():
    """real = {0, 1, 2, 3, 4} on a line, k = 1: every real ball has radius 1, so the real manifold is [-1, 5].
    fake = {0.5, 4.5, 10, 10.2}: 0.5 and 4.5 are inside (precision 2/4). Fake radii (k = 1): 0.5 -> 4,
    4.5 -> 4, 10 -> 0.2, 10.2 -> 0.2; real points within 4 of 0.5 or 4.5: all five (recall 5/5)."""
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    fake = torch.tensor([[0.5], [4.5], [10.0], [10.2]], dtype=torch.float64)
    p, r = precision_recall(real, fake, k=1, dtype=torch.float64)
    assert (p, r) == (0.5, 1.0)
    # k = 3: real radii 3, 2, 2, 2, 3 -> manifold [-3, 7]: still 2 of 4 fakes. Fake radii: 0.5 -> 9.7,
    # 4.5 -> 5.7, 10 -> 5.5, 10.2 -> 5.7: every real point is within 9.7 of 0.5.
    assert precision_recall(real, fake, k=3, dtype=torch.float64) == (0.5, 1.0)


def test_mode_dropping_lowers_recall_not_precision():
    rng = np.random.default_rng(1)
    real = np.concatenate([rng.standard_normal((300, 4)), rng.standard_normal((300, 4)) + 20])
    fake = rng.standard_normal((300, 4))  # only the first mode
    p, r = precision_recall(real, fake, k=3)
    assert p > 0.9 and 0.35 < r < 0.55


def test_boundary_counts_as_inside():
    pts = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    assert manifold_coverage(torch.tensor([[3.0]], dtype=torch.float64), pts, torch.tensor([1.0, 1.0])) == 1.0
    assert manifold_coverage(torch.tensor([[3.5]], dtype=torch.float64), pts, torch.tensor([1.0, 1.0])) == 0.0


def test_shape_errors():
    with pytest.raises(ValueError, match="expected"):
        precision_recall(np.zeros((5, 3)), np.zeros((5, 4)))
