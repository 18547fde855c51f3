"""Inception features exactly as clean-fid's "clean" mode computes them, from a LOCAL TorchScript file.

clean-fid downloads `inception-2015-12-05.pt` on first use; wadi never fetches anything unless the user sets
`eval.allow_download: true`. What is replicated from cleanfid (0.1.35: resize.py, utils.py,
inception_torchscript.py):
  - resize: each channel of the uint8 image as a PIL float32 ('F') image, BICUBIC to 299 x 299, clipped to
    [0, 255], kept as float32 (no re-quantisation) - `make_resizer("PIL", False, "bicubic", (299, 299))`;
  - network input: (x - 128) / 128 on the (N, 3, 299, 299) float tensor, then the TorchScript module's
    `layers` submodule (not its forward, which would resize again), flattened to (N, 2048).

The extractor is "whatever TorchScript file `inception_path` points to" with that contract (a `layers`
submodule taking (N, 3, 299, 299) in [-1, 1] to (N, D[, 1, 1])), so tests use a tiny stand-in.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

INCEPTION_FILE = "inception-2015-12-05.pt"
# clean-fid's source of the file (cleanfid/downloads_helper.py), the StyleGAN2-ADA metrics release
INCEPTION_URL = f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/{INCEPTION_FILE}"
INCEPTION_SIZE = 299


class WeightsNotFoundError(FileNotFoundError):
    """Evaluation weights are missing locally; the message says what they are and where to get them."""


def missing_weights_error(path: Path, what: str, how_to_get: str, key: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"{what} not found at {path}.\n"
        f"  Get it: {how_to_get}\n"
        f"  Then set `{key}=<path>` (or `eval.allow_download=true` to let wadi fetch it to that path)."
    )


def download_to(url: str, path: Path) -> Path:
    """Fetch `url` to `path` through a temporary file (no half-written weights on interruption)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        with urllib.request.urlopen(url) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def resolve_inception_path(path: str | Path, allow_download: bool = False) -> Path:
    """The TorchScript file: `path` itself, or `path/inception-2015-12-05.pt` for a folder (clean-fid style)."""
    path = Path(str(path)).expanduser()
    if path.is_dir():
        path = path / INCEPTION_FILE
    if path.is_file():
        return path
    if allow_download:
        return download_to(INCEPTION_URL, path)
    raise missing_weights_error(
        path,
        "Inception-v3 TorchScript weights for clean-fid FID (inception-2015-12-05.pt, 95 MB)",
        f"wget {INCEPTION_URL} -O {path}",
        "eval.inception_path",
    )


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def clean_resize(image: np.ndarray, size: int = INCEPTION_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) float32: clean-fid's per-channel PIL 'F' bicubic resize, clipped."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"clean_resize expects an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    channels = [
        np.asarray(
            Image.fromarray(image[:, :, c].astype(np.float32)).resize(  # a mode "F" image
                (size, size), resample=Image.Resampling.BICUBIC
            )
        ).clip(0, 255)
        for c in range(3)
    ]
    return np.stack(channels, axis=2).astype(np.float32)


def clean_batch(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, 299, 299) float32 in [0, 255], the extractor's input."""
    if len(images) == 0:
        return torch.zeros(0, 3, INCEPTION_SIZE, INCEPTION_SIZE)
    from wadi.metrics.protocol import thread_map

    return torch.from_numpy(np.stack(thread_map(clean_resize, images))).permute(0, 3, 1, 2).contiguous()


class _CleanFiles(torch.utils.data.Dataset):
    """Reference files -> protocol crop/resize -> clean resize, in DataLoader workers (decode is the cost)."""

    def __init__(self, files: Sequence[Path], resolution: int, resize_filter: str):
        self.files, self.resolution, self.resize_filter = list(files), resolution, resize_filter

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from wadi.metrics.protocol import load_reference_image

        image = load_reference_image(self.files[i], self.resolution, self.resize_filter)
        return torch.from_numpy(clean_resize(image)).permute(2, 0, 1)


class InceptionFeatures:
    """clean-fid "clean" Inception features of uint8 images, from the TorchScript file at `path`.

    Missing file: WeightsNotFoundError naming it, its release URL and `eval.inception_path`.
    """

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        allow_download: bool = False,
    ) -> None:
        self.path = resolve_inception_path(path, allow_download)
        try:
            self.net = torch.jit.load(str(self.path), map_location="cpu").eval()
        except RuntimeError as err:
            raise ValueError(
                f"eval.inception_path: {self.path} is not a loadable TorchScript file: {err}"
            ) from None
        if not hasattr(self.net, "layers"):
            raise ValueError(
                f"eval.inception_path: {self.path} has no `layers` submodule; expected clean-fid's "
                f"{INCEPTION_FILE} (or a stand-in with the same contract)"
            )
        self.device = torch.device(device)
        self.net.to(self.device)
        self.batch_size = batch_size
        self._sha256: str | None = None

    def to(self, device: str | torch.device) -> InceptionFeatures:
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    @property
    def sha256(self) -> str:
        """Content hash of the weights file (part of the reference-statistics cache key)."""
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    @torch.no_grad()
    def forward_clean(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 299, 299) float in [0, 255] (already clean-resized) -> (N, D) float32 on CPU."""
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            batch = x[i : i + self.batch_size].to(self.device, torch.float32)
            feats = self.net.layers((batch - 128) / 128)
            out.append(feats.reshape(batch.shape[0], -1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 protocol images -> (N, D) float32 features."""
        feats = [
            self.forward_clean(clean_batch(images[i : i + self.batch_size]))
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32)

    def files(
        self,
        files: Sequence[Path],
        resolution: int = 256,
        resize_filter: str = "lanczos",
        num_workers: int = 0,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Features of image files under the protocol (crop + resize to `resolution`, then clean resize)."""
        from tqdm.auto import tqdm

        loader = torch.utils.data.DataLoader(
            _CleanFiles(files, resolution, resize_filter),
            batch_size=self.batch_size,
            num_workers=num_workers,
            shuffle=False,
        )
        feats = []
        with tqdm(total=len(files), unit="img", desc="reference features", disable=not show_progress) as bar:
            for batch in loader:
                feats.append(self.forward_clean(batch))
                bar.update(batch.shape[0])
        return torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32)


class _StandinInception(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, kernel_size=13, stride=13),  # 299 -> 23
            torch.nn.Tanh(),
            torch.nn.AdaptiveAvgPool2d(4),
            torch.nn.Flatten(),
            torch.nn.Linear(8 * 16, dim),
            torch.nn.Unflatten(1, (dim, 1, 1)),  # the real network's (N, 2048, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def save_standin_inception(path: str | Path, dim: int = 16, seed: int = 0) -> Path:
    """A tiny random TorchScript file with the Inception file's contract, for tests and offline smoke runs.

    Its features mean nothing; it only lets the whole pipeline run where the real 95 MB file is unavailable.
    """
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(_StandinInception(dim).eval()).save(str(path))
    return path
