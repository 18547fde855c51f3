"""FID against cached reference statistics (Heusel et al. 2017, eq. 6; clean-fid "clean" features).

d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) in float64 on clean-fid's features and statistics
(np.mean, np.cov): what clean-fid reports, to float64 rounding. `frechet_distance` here is also the toy FID's.

Reference statistics (mu, sigma and the raw features, which precision/recall need) are computed once per
reference folder and cached as `<stats_cache_dir>/ref_<key>.npz`; the key hashes the file list with sizes and
mtimes, the protocol parameters and the extractor file's sha256, so editing any of them recomputes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wadi.metrics.protocol import ReferenceFiles, all_gather_ordered, dist_info, split_for_rank

log = logging.getLogger(__name__)
CACHE_VERSION = 1
ArrayLike = np.ndarray | torch.Tensor


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64; numpy arrays or tensors.

    The one Frechet distance of the package: COCO FID (wadi.evaluate) and the toy FID (wadi.metrics.toy).
    tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))): the inner matrix is symmetric PSD, so `eigh` gives
    it exactly where clean-fid's general sqrtm of the non-symmetric S1 S2 warns on singular covariances (fewer
    samples than dimensions) and can return complex noise. On well-conditioned statistics the two agree to
    float64 rounding (tests/metrics/test_fid.py checks against the sqrtm route).
    """
    mu1, mu2 = (np.atleast_1d(_float64(m)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(_float64(s)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"frechet_distance: mu1 {mu1.shape} sigma1 {sigma1.shape} mu2 {mu2.shape} sigma2 {sigma2.shape}; "
            "expected (D,), (D, D) for both"
        )
    evals, evecs = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    inner = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean, 0.0))


def _float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), unbiased covariance (D, D)) in float64, as clean-fid's np.mean / np.cov(rowvar=False)."""
    f = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_statistics needs (N >= 2, D) features, got {f.shape}")
    f = f.astype(np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid_from_features(fake: np.ndarray, real: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(fake), *feature_statistics(real))


@dataclass
class ReferenceStats:
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    features: np.ndarray  # (N, D) float32, for precision/recall
    key: str
    skipped: int = 0  # non-image files in the folder

    @property
    def n(self) -> int:
        return int(self.features.shape[0])


def reference_key(
    reference: ReferenceFiles, resolution: int, resize_filter: str, extractor_sha256: str
) -> str:
    """sha256 of (relative path, size, mtime_ns) per file + protocol parameters + extractor weights hash."""
    h = hashlib.sha256()
    meta = {
        "version": CACHE_VERSION,
        "resolution": resolution,
        "filter": resize_filter,
        "net": extractor_sha256,
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    for f in reference.files:
        st = f.stat()
        h.update(f"\n{f.relative_to(reference.root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


def save_npz_atomic(path: Path, compressed: bool = False, **arrays) -> None:
    """Write an .npz through a temporary file and a rename: a crash never leaves a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def reference_statistics(
    reference: ReferenceFiles,
    extractor,
    resolution: int = 256,
    resize_filter: str = "lanczos",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ReferenceStats:
    """Statistics of the reference images under the protocol, from the cache when the key matches.

    With torch.distributed initialised every rank extracts its strided share of the files and the features
    are gathered in file order (so the result equals one process); rank 0 writes the cache.
    """
    key = reference_key(reference, resolution, resize_filter, extractor.sha256)
    cache = Path(str(cache_dir)).expanduser() / f"ref_{key[:24]}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                log.info("reference statistics from cache %s", cache)
                return ReferenceStats(z["mu"], z["sigma"], z["features"], key, reference.skipped)
    rank, world = dist_info()
    if progress is not None:
        progress(
            f"reference statistics: {len(reference.files)} images in {reference.root} (cached after this)"
        )
    mine = [reference.files[i] for i in split_for_rank(len(reference.files), rank, world)]
    show = progress is not None and rank == 0
    local = torch.from_numpy(
        extractor.files(mine, resolution, resize_filter, num_workers, show_progress=show)
    )
    features = all_gather_ordered(local, len(reference.files)).numpy().astype(np.float32)
    mu, sigma = feature_statistics(features)
    if cache is not None and rank == 0:
        save_npz_atomic(cache, mu=mu, sigma=sigma, features=features, key=np.array(key))
        log.info("reference statistics cached in %s", cache)
    return ReferenceStats(mu, sigma, features, key, reference.skipped)
