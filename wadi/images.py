"""Saving images and grids (PNG): plain, captioned per prompt row, or labelled per frame."""

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


def save_grid(
    images: torch.Tensor, path: str | Path, nrow: int | None = None, captions: list[str] | None = None
) -> Path:
    """A PNG grid; with `captions` (one per image) one row per prompt, captioned (`captioned_grid`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images, nrow) if captions is None else captioned_grid(images, list(captions))
    Image.fromarray(grid).save(path)
    return path


def save_images(images: torch.Tensor, directory: str | Path, names: list[str]) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for img, name in zip(to_uint8(images), names):
        paths.append(directory / f"{name}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


# ------------------------------------------------------------------------------------------ labelled pictures
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except TypeError:  # an older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _font_size(image_width: int) -> int:
    return max(10, min(20, image_width // 6))


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap of `text` to lines no wider than `width` pixels (a long word gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _rows_by_caption(captions: list[str], max_per_row: int) -> list[tuple[str, list[int]]]:
    """Runs of consecutive equal captions -> (caption, image indices) rows of at most `max_per_row` images."""
    rows: list[tuple[str, list[int]]] = []
    for i, caption in enumerate(captions):
        if rows and rows[-1][0] == caption and len(rows[-1][1]) < max_per_row:
            rows[-1][1].append(i)
        else:
            rows.append((caption, [i]))
    return rows


def captioned_grid(
    images: torch.Tensor, captions: list[str], pad: int = 2, max_per_row: int = 8
) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] with one caption per image -> a uint8 grid, one row per run of equal captions
    (a prompt's seeds side by side), the caption written on white to the left of its row."""
    from PIL import ImageDraw

    if len(captions) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(captions)} captions")
    _, _, h, w = images.shape
    font = _font(_font_size(w))
    text_w = max(160, min(320, 3 * w))
    rows = _rows_by_caption([str(c) for c in captions], max_per_row)
    cells = max(len(idx) for _, idx in rows)
    line_h = round(font.size * 1.25) if hasattr(font, "size") else 12
    row_h = h + pad
    wrapped = [_wrap(caption, font, text_w - 2 * pad) for caption, _ in rows]
    heights = [max(row_h, len(lines) * line_h + 2 * pad) for lines in wrapped]
    canvas = Image.new("RGB", (text_w + cells * (w + pad) + pad, sum(heights) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    pixels = to_uint8(images)
    y = pad
    for (_, idx), lines, height in zip(rows, wrapped, heights):
        for line_no, line in enumerate(lines):
            draw.text((pad, y + line_no * line_h), line, fill="black", font=font)
        for j, i in enumerate(idx):
            canvas.paste(Image.fromarray(pixels[i]), (text_w + pad + j * (w + pad), y))
        y += height
    return np.asarray(canvas)


def labelled_strip(frames: torch.Tensor, labels: list[str], pad: int = 2) -> np.ndarray:
    """(S, 3, H, W) frames side by side with a label (one or more lines) centred under each frame."""
    from PIL import ImageDraw

    if len(labels) != frames.shape[0]:
        raise ValueError(f"got {frames.shape[0]} frames but {len(labels)} labels")
    strip = Image.fromarray(make_grid(frames, nrow=frames.shape[0], pad=pad))
    w = frames.shape[-1]
    font = _font(_font_size(w))
    line_h = round(font.size * 1.25) if hasattr(font, "size") else 12
    lines = max(len(str(label).splitlines()) for label in labels)
    canvas = Image.new("RGB", (strip.width, strip.height + lines * line_h + pad), "white")
    canvas.paste(strip, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        centre = pad + i * (w + pad) + w / 2
        for k, line in enumerate(str(label).splitlines()):
            draw.text(
                (centre - font.getlength(line) / 2, strip.height + k * line_h), line, fill="black", font=font
            )
    return np.asarray(canvas)
