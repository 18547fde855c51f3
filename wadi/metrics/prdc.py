"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models", eqs. 1-3), on the same Inception features as FID, k = 3.

Each set's manifold is the union of balls around its points with radius = distance to the point's k-th
nearest neighbour within the set (the point itself excluded). precision = fraction of generated points inside
the real manifold; recall = fraction of real points inside the generated manifold. Boundaries count as
inside (<=), as in the authors' and StyleGAN2-ADA's code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _as_tensor(x: np.ndarray | Tensor, device, dtype) -> Tensor:
    return torch.as_tensor(x).to(device=device, dtype=dtype)


def knn_radii(features: Tensor, k: int = 3, batch_size: int = 2048) -> Tensor:
    """(N,) distance from each row to its k-th nearest other row (the row itself excluded)."""
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"knn_radii: k={k} needs at least k + 1 = {k + 1} points, got {n}")
    radii = []
    for i in range(0, n, batch_size):
        d = torch.cdist(features[i : i + batch_size], features)  # (b, N), includes the 0 to itself
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def manifold_coverage(queries: Tensor, points: Tensor, radii: Tensor, batch_size: int = 2048) -> float:
    """Fraction of `queries` within radii[i] of some points[i] (eq. 1's indicator, averaged as eq. 2/3)."""
    inside = []
    for i in range(0, queries.shape[0], batch_size):
        d = torch.cdist(queries[i : i + batch_size], points)  # (b, N)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: np.ndarray | Tensor,
    fake: np.ndarray | Tensor,
    k: int = 3,
    batch_size: int = 2048,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """(precision, recall) of `fake` (M, D) against `real` (N, D) with k-NN manifolds."""
    real, fake = _as_tensor(real, device, dtype), _as_tensor(fake, device, dtype)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"precision_recall: real {tuple(real.shape)} and fake {tuple(fake.shape)}; expected (N, D), (M, D)"
        )
    precision = manifold_coverage(fake, real, knn_radii(real, k, batch_size), batch_size)
    recall = manifold_coverage(real, fake, knn_radii(fake, k, batch_size), batch_size)
    return precision, recall
