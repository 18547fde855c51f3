"""FID against cached reference statistics (Heusel et al. 2017, eq. 6; clean-fid "clean" features).

d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), in float64 with clean-fid's algorithm (scipy
sqrtm), so numbers match what clean-fid reports for the same features.

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
import scipy.linalg
import torch

from wadi.metrics.protocol import ReferenceFiles, all_gather_ordered, dist_info, split_for_rank

log = logging.getLogger(__name__)
CACHE_VERSION = 1
EPS = 1e-6  # clean-fid's diagonal offset for a singular covariance product


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2) in float64: clean-fid's algorithm.

    clean-fid 0.1.35's own function calls `scipy.linalg.sqrtm(..., disp=False)`, which SciPy >= 1.16 no
    longer returns a tuple for, so it is re-implemented here step for step: covmean = sqrtm(S1 S2) (with
    eps * I added to both when that is not finite), its real part if the imaginary one is numerical noise.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"frechet_distance: mu1 {mu1.shape} sigma1 {sigma1.shape} mu2 {mu2.shape} sigma2 {sigma2.shape}; "
            "expected (D,), (D, D) for both"
        )
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        log.warning("frechet_distance: singular product; adding %g to the covariance diagonals", EPS)
        offset = np.eye(sigma1.shape[0]) * EPS
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"frechet_distance: sqrtm has an imaginary component {np.abs(covmean.imag).max():g}"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


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


def _save_npz_atomic(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
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
        _save_npz_atomic(cache, mu=mu, sigma=sigma, features=features, key=np.array(key))
        log.info("reference statistics cached in %s", cache)
    return ReferenceStats(mu, sigma, features, key, reference.skipped)
