"""Image grids: torchvision's make_grid underneath, the same pixels as the hand-written grid it replaced."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wadi import images as wadi_images
from wadi.images import make_grid, to_uint8


def _reference_grid(images, nrow=None, pad=2):
    """The grid wadi wrote before it used torchvision (kept here as the expected pixels)."""
    n, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(to_uint8(images)):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = (
            img
        )
    return grid


@pytest.mark.parametrize(
    ("n", "nrow", "pad"), [(1, None, 2), (1, 3, 2), (3, 4, 2), (5, None, 2), (6, 3, 0), (7, 2, 3)]
)
def test_grid_pixels_unchanged(n, nrow, pad):
    x = torch.rand(n, 3, 5, 7, generator=torch.Generator().manual_seed(n)) * 1.2 - 0.1  # some out of [0, 1]
    got = make_grid(x, nrow=nrow, pad=pad)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, _reference_grid(x, nrow, pad))


def test_grid_is_torchvision_make_grid(monkeypatch):
    import torchvision.utils

    calls = []
    real = torchvision.utils.make_grid

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torchvision.utils, "make_grid", spy)
    wadi_images.make_grid(torch.rand(4, 3, 5, 5), nrow=2)
    assert calls and calls[0]["nrow"] == 2 and calls[0]["padding"] == 2
