"""FID: the distance vs direct formulas, clean-fid equivalence of the features, reference cache, offline weights."""

from __future__ import annotations

import os
import urllib.request

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from wadi.metrics.features import (
    INCEPTION_URL,
    InceptionFeatures,
    WeightsNotFoundError,
    clean_resize,
    save_standin_inception,
)
from wadi.metrics.fid import feature_statistics, fid_from_features, frechet_distance, reference_statistics
from wadi.metrics.protocol import list_reference_images, protocol_resize


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return save_standin_inception(tmp_path_factory.mktemp("inception") / "inception-2015-12-05.pt", dim=16)


@pytest.fixture(scope="module")
def standin_2048(tmp_path_factory):
    """clean-fid's wrapper hard-codes the real network's 2048 features."""
    return save_standin_inception(
        tmp_path_factory.mktemp("inception2048") / "inception-2015-12-05.pt", dim=2048
    )


def _random_spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_matches_direct_formulas():
    rng = np.random.default_rng(0)
    for d in (1, 4, 9):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = _random_spd(d, rng), _random_spd(d, rng)
        # tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2), all symmetric: an independent route to the same number
        r1 = scipy.linalg.sqrtm(s1).real
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
        direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-7, abs=1e-9)
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2 in standard deviations
    assert frechet_distance(
        np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])
    ) == pytest.approx(9.0 + 1.0)
    with pytest.raises(ValueError, match="expected"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((4000, 8))
    assert fid_from_features(real, real) == pytest.approx(0.0, abs=1e-6)
    fids = [fid_from_features(real + shift, real) for shift in (0.1, 0.3, 1.0)]
    # a pure mean shift by delta in every one of D = 8 dimensions adds D * delta^2, nothing else
    assert fids == pytest.approx([8 * 0.01, 8 * 0.09, 8 * 1.0], rel=1e-6, abs=1e-6)
    mu, sigma = feature_statistics(torch.from_numpy(real).float())
    assert mu.dtype == np.float64 and sigma.shape == (8, 8)
    np.testing.assert_allclose(sigma, np.cov(real.astype(np.float32).astype(np.float64), rowvar=False))


def _images(n, seed, size=(48, 64), brightness=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, (n, *size, 3)).astype(np.int16) + brightness
    return [a.clip(0, 255).astype(np.uint8) for a in base]


def test_image_fid_zero_on_itself_and_monotone_in_brightness(standin):
    net = InceptionFeatures(standin, batch_size=16)
    real = np.stack([protocol_resize(a, 32) for a in _images(40, 0)])
    feats = net(real)
    assert feats.shape == (40, 16) and feats.dtype == np.float32
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)
    fids = []
    for b in (10, 30, 60):
        fake = np.stack([protocol_resize(a, 32) for a in _images(40, 1, brightness=b)])
        fids.append(fid_from_features(net(fake), feats))
    assert fids[0] < fids[1] < fids[2]


def test_clean_resize_equals_clean_fid():
    from cleanfid.resize import build_resizer

    img = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    ours = clean_resize(img)
    theirs = build_resizer("clean")(img)
    assert ours.dtype == np.float32 and ours.shape == (299, 299, 3)
    np.testing.assert_array_equal(ours, theirs)


def _reference_folder(root, n=10):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):  # varied aspect ratios, both orientations
        (a,) = _images(1, 3 + i, size=(30 + 5 * i, 52))
        Image.fromarray(a).save(root / f"img_{i:03d}.png")
    (root / "LICENSE.txt").write_text("not an image")
    return root


def test_features_equal_clean_fid_pipeline(standin_2048, tmp_path):
    """Our reference features = clean-fid's own get_files_features + InceptionV3W on the same TorchScript
    file, with GigaGAN's crop + resize as clean-fid's custom_image_tranform."""
    from cleanfid.fid import get_files_features
    from cleanfid.inception_torchscript import InceptionV3W

    root = _reference_folder(tmp_path / "ref")
    files = list_reference_images(root).files
    ours = InceptionFeatures(standin_2048, batch_size=4).files(files, resolution=32, resize_filter="lanczos")
    model = InceptionV3W(str(standin_2048.parent), download=False)
    theirs = get_files_features(
        [str(f) for f in files],
        model,
        num_workers=0,
        batch_size=4,
        device=torch.device("cpu"),
        mode="clean",
        custom_image_tranform=lambda a: protocol_resize(a, 32, "lanczos"),
        verbose=False,
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_reference_statistics_cached_and_keyed(standin, tmp_path, monkeypatch):
    root = _reference_folder(tmp_path / "ref")
    net = InceptionFeatures(standin, batch_size=4)
    ref = list_reference_images(root)
    stats = reference_statistics(ref, net, 32, "lanczos", tmp_path / "cache")
    assert stats.n == 10 and stats.skipped == 1 and stats.features.shape == (10, 16)
    np.testing.assert_allclose(stats.mu, stats.features.astype(np.float64).mean(0))
    assert len(list((tmp_path / "cache").glob("ref_*.npz"))) == 1

    calls = []
    original = net.files
    monkeypatch.setattr(net, "files", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = reference_statistics(ref, net, 32, "lanczos", tmp_path / "cache")
    assert calls == [] and again.key == stats.key
    np.testing.assert_array_equal(again.sigma, stats.sigma)

    reference_statistics(ref, net, 64, "lanczos", tmp_path / "cache")  # another protocol resolution
    assert calls == [1]
    first = ref.files[0]
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a touched file changes the key
    changed = reference_statistics(list_reference_images(root), net, 32, "lanczos", tmp_path / "cache")
    assert calls == [1, 1] and changed.key != stats.key


def test_missing_inception_names_file_url_and_key_and_downloads_nothing(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    missing = tmp_path / "weights" / "inception-2015-12-05.pt"
    with pytest.raises(WeightsNotFoundError) as err:
        InceptionFeatures(missing)
    msg = str(err.value)
    assert str(missing) in msg and INCEPTION_URL in msg and "eval.inception_path" in msg
    assert "allow_download" in msg
    with pytest.raises(WeightsNotFoundError, match="inception-2015-12-05.pt"):
        InceptionFeatures(tmp_path)  # a folder: the file inside it, like clean-fid


def test_allow_download_fetches_to_the_configured_path(standin, tmp_path, monkeypatch):
    payload = standin.read_bytes()

    class Response:
        def __init__(self):
            self.left = payload

        def read(self, n):
            chunk, self.left = self.left[:n], self.left[n:]
            return chunk

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    urls = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda url: urls.append(url) or Response())
    target = tmp_path / "w" / "inception-2015-12-05.pt"
    net = InceptionFeatures(target, allow_download=True)
    assert urls == [INCEPTION_URL] and target.read_bytes() == payload
    assert net(np.zeros((2, 16, 16, 3), np.uint8)).shape == (2, 16)


def test_not_torchscript_is_a_clear_error(tmp_path):
    bad = tmp_path / "inception-2015-12-05.pt"
    bad.write_bytes(b"html error page")
    with pytest.raises(ValueError, match="eval.inception_path.*TorchScript"):
        InceptionFeatures(bad)


def test_one_frechet_distance_serves_fid_and_toy_metrics():
    import wadi.metrics.fid as fid
    import wadi.metrics.toy as toy

    assert toy.frechet_distance is fid.frechet_distance
    assert toy.feature_statistics is fid.feature_statistics


def test_frechet_distance_takes_tensors_and_singular_covariances_quietly():
    """Fewer samples than dimensions (a small eval): singular covariances, a real non-negative distance, no
    LinAlgWarning / complex noise, and the same number whether given tensors or arrays."""
    import warnings

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((20, 64)), rng.standard_normal((20, 64)) + 0.1
    a[:, :20] = 0.0
    stats = (*feature_statistics(a), *feature_statistics(b))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = frechet_distance(*stats)
        d_t = frechet_distance(*(torch.from_numpy(s) for s in stats))
    # independent route: the eigenvalues of S1 S2 (real and >= 0 in exact arithmetic) are those of the inner matrix
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvals(stats[1] @ stats[3]).real, 0, None)).sum()
    direct = ((stats[0] - stats[2]) ** 2).sum() + np.trace(stats[1]) + np.trace(stats[3]) - 2 * tr_covmean
    assert d == pytest.approx(direct, rel=1e-6) and d_t == d and d > 0
    x = rng.standard_normal((5, 8))
    assert frechet_distance(*feature_statistics(x), *feature_statistics(x)) == pytest.approx(0.0, abs=1e-9)
