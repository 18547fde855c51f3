"""LoRaD's formula: Low-rank Rotation of weight Direction (WaDi, spec section 2).

For W (out x in), the input columns are split into adjacent pairs (2k, 2k+1). Theta = A @ B gives one
angle per (output row, column pair), wrapped into [-pi, pi), and each pair is rotated in its plane:

    W'[:, 2k]   = W[:, 2k] cos(Theta[:, k]) - W[:, 2k+1] sin(Theta[:, k])
    W'[:, 2k+1] = W[:, 2k] sin(Theta[:, k]) + W[:, 2k+1] cos(Theta[:, k])

Rotations preserve every row's L2 norm, so the adapter changes directions, never norms.

Two names give W': `lorad_weight` here (the exact function, float32; merging uses it) and
`wadi.adapters.function.rotated_weight` (the training forward: the same function through one autograd node
and, on CUDA, a fused kernel). `rotate` is the shared step from W and an unwrapped Theta.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def wrap_angle(theta: Tensor) -> Tensor:
    """Map angles into [-pi, pi): ((theta + pi) mod 2pi) - pi."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


def rotate_pairs(weight: Tensor, theta: Tensor) -> Tensor:
    """Rotate adjacent column pairs of `weight` (..., out, in) by `theta` (..., out, in/2)."""
    w = weight.unflatten(-1, (-1, 2))  # (out, in/2, 2)
    w_even, w_odd = w.unbind(-1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rotated = torch.stack((w_even * cos - w_odd * sin, w_even * sin + w_odd * cos), dim=-1)
    return rotated.flatten(-2)  # (out, in)


def rotate(weight: Tensor, theta: Tensor, dtype: torch.dtype) -> Tensor:
    """W' in `dtype` from W and unwrapped Theta (out, in/2), the arithmetic in float32."""
    return rotate_pairs(weight.float(), wrap_angle(theta.float())).to(dtype)


def lorad_weight(weight: Tensor, lorad_A: Tensor, lorad_B: Tensor) -> Tensor:
    """W' for angles Theta = wrap(A @ B); computed in float32, returned in the weight's dtype."""
    return rotate(weight, lorad_A.float() @ lorad_B.float(), weight.dtype)
