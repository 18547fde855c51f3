"""The zero-shot COCO evaluation protocol of GigaGAN / DMD2 / SwiftBrushv2: which captions, which seeds,
which reference images, and how every image (reference and generated) is cropped and resized.

Image pipeline (identical for reference and generated images, as in GigaGAN's `evaluation.py` and DMD2's
`coco_evaluator.py`):
  1. to RGB uint8 (generated images: round(clamp(x, 0, 1) * 255), as `wadi.images.to_uint8` saves PNGs);
  2. center crop to a square of side min(H, W), offsets `int(round((H - s) / 2))`, `int(round((W - s) / 2))`
     (torchvision's `center_crop`, which both codebases call through BigGAN's `CenterCropLongEdge`);
  3. PIL resize to `resolution` x `resolution` (256) with `resize_filter` (default LANCZOS, what both
     codebases pass; "bicubic" etc. are available for other conventions);
  4. uint8 again (PIL's uint8 resize rounds and clips), then clean-fid's own "clean" resize to 299 for
     Inception (wadi.metrics.features) and CLIP's processor for CLIP score (wadi.metrics.clip).

Caption selection (`load_captions`):
  - COCO annotation JSON (captions_val2014.json / captions_val2017.json): captions are whitespace-normalised
    (`" ".join(c.split())`), empty ones dropped; each image keeps ONE caption, chosen by
    sha256(f"{seed}:caption:{image_id}") modulo its number of captions (captions ordered by annotation id);
    images are then ordered by sha256(f"{seed}:image:{image_id}") and the first `n` kept. Hashes instead of a
    RNG: the choice is the same on every machine, Python and NumPy version, and a smaller `n` is a prefix of a
    larger one (the training callback's 5k subset is inside the CLI's 30k set).
  - plain text (one caption per line, e.g. the 30k-caption lists DMD2/GigaGAN ship): the file's order, first
    `n` usable lines.
  - item i is generated with seed `seed + i`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

# clean-fid's EXTENSIONS (cleanfid/utils.py) minus .npy: files the reference folder may hold.
IMAGE_EXTENSIONS = frozenset({".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"})
RESIZE_FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


# ---------------------------------------------------------------------------------------------- images


def center_crop_square(image: Image.Image) -> Image.Image:
    """Crop the central min(H, W) square, with torchvision's center_crop offsets (round-half-even)."""
    w, h = image.size
    s = min(w, h)
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    return image.crop((left, top, left + s, top + s))


def protocol_resize(image: Image.Image | np.ndarray, resolution: int = 256, resize_filter: str = "lanczos"):
    """One image -> (resolution, resolution, 3) uint8: RGB, center crop to square, PIL resize (steps 1-4)."""
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter={resize_filter!r}; expected one of {sorted(RESIZE_FILTERS)}")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    image = center_crop_square(image.convert("RGB"))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), resample=RESIZE_FILTERS[resize_filter])
    return np.asarray(image, dtype=np.uint8)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats in [0, 1] -> (N, H, W, 3) uint8, rounding (the values a saved PNG holds)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected generated images (N, 3, H, W), got {tuple(images.shape)}")
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def protocol_images(
    images: torch.Tensor, resolution: int = 256, resize_filter: str = "lanczos"
) -> np.ndarray:
    """Generated (N, 3, H, W) in [0, 1] -> (N, resolution, resolution, 3) uint8 under the protocol."""
    arr = tensor_to_uint8(images)
    if len(arr) == 0:
        return np.zeros((0, resolution, resolution, 3), np.uint8)
    return np.stack(thread_map(lambda a: protocol_resize(a, resolution, resize_filter), arr))


def thread_map(fn, items) -> list:
    """[fn(x) for x in items] on a few threads: PIL resizes release the GIL (~4x on 8 cores)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    items = list(items)
    workers = min(8, os.cpu_count() or 1, len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def load_reference_image(
    path: str | Path, resolution: int = 256, resize_filter: str = "lanczos"
) -> np.ndarray:
    """A reference image file under the protocol (ValueError naming the file if PIL cannot read it)."""
    try:
        with Image.open(path) as img:
            return protocol_resize(img, resolution, resize_filter)
    except (OSError, SyntaxError) as err:  # PIL raises these for truncated/garbled files
        raise ValueError(f"cannot read reference image {path}: {err}") from None


# ---------------------------------------------------------------------------------------------- captions


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation item: the caption to generate from, its seed, and where it came from."""

    caption: str
    seed: int
    image_id: int | None = None
    file_name: str | None = None


def _clean(text) -> str:
    return " ".join(str(text).split()) if text is not None else ""


def _hash_int(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def load_captions(path: str | Path, n: int | None = None, seed: int = 0) -> list[EvalPrompt]:
    """The protocol's evaluation prompts: `n` captions (all if None), item i with seed `seed + i`.

    Raises FileNotFoundError (missing file) or ValueError (no usable captions, fewer than `n`), naming
    the config key `eval.captions`.
    """
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"eval.captions: captions file not found: {path} (expected COCO's captions_val2014.json / "
            "captions_val2017.json from annotations_trainval*.zip, or a text file with one caption per line)"
        )
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"eval.captions: {path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"eval.captions: {path} is not a COCO captions JSON (top level is not an object)"
            )
        if not isinstance(data.get("annotations"), list):
            raise ValueError(f"eval.captions: {path} is not a COCO captions JSON (no 'annotations' list)")
        files = {im.get("id"): im.get("file_name") for im in data.get("images", []) if isinstance(im, dict)}
        captions = _one_caption_per_image(data["annotations"], seed)
        order = sorted(captions, key=lambda image_id: (_hash_int(seed, "image", image_id), image_id))
        rows = [(captions[i], i, files.get(i)) for i in order]
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [(text, None, None) for text in map(_clean, lines) if text]
    if not rows:
        raise ValueError(f"eval.captions: no usable (non-empty) captions in {path}")
    if n is not None and len(rows) < n:
        unit = "images with a caption" if path.suffix.lower() == ".json" else "non-empty lines"
        raise ValueError(
            f"eval.captions: {path} has {len(rows)} usable captions ({unit}) but n_samples={n} were requested"
        )
    rows = rows[:n] if n is not None else rows
    return [
        EvalPrompt(text, seed + i, image_id, file_name) for i, (text, image_id, file_name) in enumerate(rows)
    ]


def _one_caption_per_image(annotations: list, seed: int) -> dict[int, str]:
    """{image_id: the caption at sha256(seed:caption:image_id) % count among its usable captions}."""
    by_image: dict[int, list[tuple[int, str]]] = {}
    for ann in annotations:
        if not isinstance(ann, dict) or "image_id" not in ann:
            continue
        text = _clean(ann.get("caption"))
        if text:
            by_image.setdefault(ann["image_id"], []).append((ann.get("id", 0), text))
    return {
        image_id: sorted(caps)[_hash_int(seed, "caption", image_id) % len(caps)][1]
        for image_id, caps in by_image.items()
    }


# ---------------------------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class ReferenceFiles:
    """The reference images the statistics are computed from, and what the folder held besides."""

    root: Path
    files: tuple[Path, ...]
    skipped: int  # non-image files ignored


def list_reference_images(reference_dir: str | Path, n: int | None = None) -> ReferenceFiles:
    """Image files under `reference_dir` (recursive, sorted by relative path); the first `n` if given.

    Files whose extension is not an image's are skipped, counted and reported with a warning. Raises
    FileNotFoundError for a missing folder and ValueError when it holds no images or fewer than `n`.
    """
    root = Path(str(reference_dir)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"eval.reference_dir: reference image folder not found: {root} (COCO-2014: the unzipped val2014/ "
            "folder, 40,504 images; COCO-2017: val2017/, 5,000 images)"
        )
    images, skipped = [], 0
    for p in sorted(root.rglob("*"), key=lambda q: q.relative_to(root).as_posix()):
        if not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p)
        else:
            skipped += 1
    if skipped:
        log.warning("eval.reference_dir %s: skipped %d non-image file(s)", root, skipped)
    if not images:
        raise ValueError(f"eval.reference_dir: no images in {root} ({skipped} non-image files skipped)")
    if n is not None and len(images) < n:
        raise ValueError(
            f"eval.reference_dir: {root} holds {len(images)} images but n_reference={n} were requested "
            f"({skipped} non-image files skipped)"
        )
    return ReferenceFiles(root, tuple(images[:n] if n is not None else images), skipped)


def split_for_rank(n: int, rank: int, world_size: int) -> list[int]:
    """Indices of item range(n) that `rank` handles: strided, so every rank gets n // W or n // W + 1."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return list(range(rank, n, world_size))


def captions_of(prompts: Sequence[EvalPrompt]) -> list[str]:
    return [p.caption for p in prompts]


def dist_info() -> tuple[int, int]:
    """(rank, world_size) of the default torch.distributed group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_ordered(local: torch.Tensor, n: int, device: str | torch.device | None = None) -> torch.Tensor:
    """Every rank's `local` rows (its `split_for_rank(n, ...)` items) -> all n rows in item order, on every rank.

    Ranks hold n // W or n // W + 1 rows; all are padded to ceil(n / W) for all_gather, and the strided split
    makes the (W, m, ...) stack's transpose the item order. One process: `local` unchanged.
    """
    import torch.distributed as dist

    rank, world = dist_info()
    if world == 1:
        return local
    m = -(-n // world)
    if local.shape[0] != len(split_for_rank(n, rank, world)):
        raise ValueError(
            f"rank {rank} holds {local.shape[0]} rows; its share of {n} items over {world} ranks differs"
        )
    if device is None:  # NCCL gathers CUDA tensors only; gloo gathers CPU ones
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    device = torch.device(device)
    if n < world:
        raise ValueError(f"cannot shard {n} items over {world} ranks; use at least as many items as ranks")
    padded = torch.zeros((m, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    stack = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(stack, padded)
    out = torch.stack(stack, 1).reshape(world * m, *local.shape[1:])  # row j * W + r = rank r's j-th item
    return out[:n].to(local.device)
