"""The shipped toy assets: checksums verified on load, clear errors naming the file, the real layouts load."""

from __future__ import annotations

import shutil

import pytest
import torch

from wadi.toy.assets import (
    ASSETS_ROOT,
    ToyAssetError,
    read_checksums,
    toy_asset_path,
    verify_asset,
    write_checksums,
)

ASSET_BUDGET = 40 * 1024**2  # issue 3: all toy assets together at most 40 MB


def test_shipped_assets_verify_and_fit_the_budget():
    total = sum(f.stat().st_size for f in ASSETS_ROOT.rglob("*") if f.is_file())
    assert total <= ASSET_BUDGET, f"toy assets take {total / 1024**2:.1f} MiB"
    sums = read_checksums(ASSETS_ROOT)
    for name in ("toy-sd", "toy-pixart", "toy-classifier"):
        folder = verify_asset(name)
        listed = {rel for rel in sums if rel.startswith(folder.name + "/")}
        on_disk = {f.relative_to(ASSETS_ROOT).as_posix() for f in folder.rglob("*") if f.is_file()}
        assert listed == on_disk, f"{name}: files not in SHA256SUMS: {sorted(on_disk - listed)}"


def test_weights_are_fp16_safetensors():
    from safetensors import safe_open

    files = [f for f in ASSETS_ROOT.rglob("*.safetensors")]
    assert len(files) >= 7  # unet, vae x2, clip, transformer, t5, classifier
    for f in files:
        with safe_open(str(f), "pt") as st:
            dtypes = {st.get_slice(k).get_dtype() for k in st.keys()}
        assert dtypes <= {"F16", "I64"}, (f, dtypes)


@pytest.fixture
def asset_copy(tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(ASSETS_ROOT, root)
    return root


def test_corrupt_file_is_named(asset_copy):
    target = asset_copy / "toy-sd" / "unet" / "config.json"
    target.write_text(target.read_text().replace("64", "65", 1))
    with pytest.raises(ToyAssetError, match=r"toy-sd/unet/config\.json.*expected"):
        toy_asset_path("toy-sd", asset_copy)
    toy_asset_path("toy-pixart", asset_copy)  # the other assets still load


def test_missing_file_and_missing_checksums_are_named(asset_copy):
    (asset_copy / "toy-classifier" / "classifier.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"toy-classifier/classifier\.safetensors"):
        verify_asset("classifier", asset_copy)
    (asset_copy / "SHA256SUMS").unlink()
    with pytest.raises(FileNotFoundError, match="SHA256SUMS"):
        verify_asset("toy-sd", asset_copy)
    with pytest.raises(ValueError, match="unknown toy asset"):
        verify_asset("toy-sdxl", asset_copy)


def test_rewritten_checksums_accept_a_retrained_asset(asset_copy):
    target = asset_copy / "toy-sd" / "pretrain.json"
    target.write_text(target.read_text() + "\n")
    with pytest.raises(ToyAssetError):
        verify_asset("toy-sd", asset_copy)
    write_checksums(asset_copy)
    verify_asset("toy-sd", asset_copy)


def test_teachers_load_in_stock_diffusers_and_predict():
    from diffusers import PixArtAlphaPipeline, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(
        toy_asset_path("toy-sd"), safety_checker=None, torch_dtype=torch.float32
    )
    assert sd.unet.config.cross_attention_dim == sd.text_encoder.config.hidden_size
    assert sd.scheduler.config.beta_schedule == "scaled_linear"
    px = PixArtAlphaPipeline.from_pretrained(toy_asset_path("toy-pixart"), torch_dtype=torch.float32)
    assert px.transformer.config.out_channels == 2 * px.transformer.config.in_channels  # learned sigma
    ids = px.tokenizer(["a large red circle at the left"], padding="max_length", return_tensors="pt")
    assert ids["attention_mask"].sum() < ids["attention_mask"].numel()  # T5 side carries a mask
    # one stock 2-step generation of each runs and gives finite 64 px images
    g = torch.Generator().manual_seed(0)
    out = sd("a large red circle at the left", num_inference_steps=2, generator=g, output_type="pt")
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()
