"""Saving images and grids (PNG)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (rows * (H + pad) + pad, nrow * (W + pad) + pad, 3) uint8 on white, through
    torchvision's make_grid; `nrow` images per row (default ceil(sqrt(N))), short rows and columns left white."""
    from torchvision.utils import make_grid as tv_make_grid

    n = images.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    cells = torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2)
    if n < nrow:  # torchvision narrows the grid to N columns; keep nrow, as white cells
        cells = torch.cat([cells, cells.new_full((nrow - n, *cells.shape[1:]), 255)])
    if cells.shape[0] == 1:  # torchvision returns a single image without its border
        grid = torch.nn.functional.pad(cells[0], (pad, pad, pad, pad), value=255)
    else:
        grid = tv_make_grid(cells, nrow=nrow, padding=pad, pad_value=255)
    return grid.permute(1, 2, 0).contiguous().numpy()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid(images, nrow)).save(path)
    return path


def save_images(images: torch.Tensor, directory: str | Path, names: list[str]) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for img, name in zip(to_uint8(images), names):
        paths.append(directory / f"{name}.png")
        Image.fromarray(img).save(paths[-1])
    return paths
