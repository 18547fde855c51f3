"""Issue 17, pictures a person can read: captioned sample grids, timestep-labelled trajectory frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wadi.analysis.trajectory import frame_labels
from wadi.images import captioned_grid, labelled_strip
from wadi.samplers import DDIM, Hybrid, OneStep


def _ink(pixels: np.ndarray) -> int:
    """Pixels that are not white: the text drawn on a white band."""
    return int((pixels.min(axis=-1) < 128).sum())


def test_captioned_grid_has_one_captioned_row_per_prompt():
    images = torch.full((6, 3, 16, 16), 0.5)  # grey cells: no ink
    grid = captioned_grid(images, ["a red circle"] * 3 + ["a blue star"] * 3, pad=2)
    assert grid.shape == (2 * 18 + 2, 160 + 3 * 18 + 2, 3)  # two rows of three, a 160 px caption column
    top, bottom = grid[:18, :160], grid[18:, :160]
    assert _ink(top) > 0 and _ink(bottom) > 0  # each row's caption is written beside it
    assert _ink(grid[:, 160:]) == 0
    with pytest.raises(ValueError, match="6 images but 1 captions"):
        captioned_grid(images, ["x"])


def test_labelled_strip_writes_under_each_frame():
    frames = torch.full((3, 3, 32, 32), 0.5)
    strip = labelled_strip(frames, ["t=999", "t=666", "t=332\nstudent"], pad=2)
    assert strip.shape[1] == 3 * 34 + 2 and strip.shape[0] > 34
    band = strip[34:]
    for i in range(3):
        assert _ink(band[:, 2 + i * 34 : 2 + i * 34 + 32]) > 0


def test_frame_labels_name_each_frames_timestep():
    alphas = torch.linspace(0.999, 0.005, 1000)
    assert frame_labels(DDIM(3), alphas) == ["t=999", "t=666", "t=332"]
    assert frame_labels(Hybrid(teacher_steps=2, schedule_steps=10), alphas) == [
        "t=999\nteacher",
        "t=899\nteacher",
        "t=799\nstudent",
    ]
    assert frame_labels(OneStep(), alphas) == ["t=999\nstudent"]
    assert frame_labels(Hybrid(teacher_steps=0), alphas) == ["t=999\nstudent"]
