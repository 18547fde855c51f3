"""The PDM loss (wadi.distill.pdm): the distance against its formula, the features hook, the loss term."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wadi.config import ConfigError
from wadi.distill.pdm import PDMLoss, as_tokens, capture, default_block, pdm_distance, real_at, resolve_block


def test_distance_matches_the_formula_written_out():
    g = torch.Generator().manual_seed(0)
    # the token counts may differ
    real, fake = torch.randn(3, 5, 4, generator=g), torch.randn(3, 7, 4, generator=g)
    c = 1e-3
    total = 0.0
    for b in range(3):
        for d in range(4):
            mr = sum(float(real[b, n, d]) for n in range(5)) / 5
            mf = sum(float(fake[b, n, d]) for n in range(7)) / 7
            total += math.sqrt((mr - mf) ** 2 + c * c) - c
    assert float(pdm_distance(real, fake, c)) == pytest.approx(total / 12, rel=1e-5)


def test_distance_is_zero_for_equal_means_and_positive_otherwise():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(2, 6, 3, generator=g)
    same_mean = real.flip(1)  # other tokens, the same per-image mean
    assert float(pdm_distance(real, same_mean)) == pytest.approx(0.0, abs=1e-7)
    assert float(pdm_distance(real, real + 0.5)) == pytest.approx(math.sqrt(0.25 + 1e-6) - 1e-3, rel=1e-5)


def test_feature_maps_become_spatial_tokens():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    tokens = as_tokens(x)
    assert tokens.shape == (2, 4, 3)
    assert torch.equal(tokens[1, 2], x[1, :, 1, 0])
    # (B, C, H, W) and its (B, HW, C) tokens give the same distance
    assert torch.equal(pdm_distance(x, x * 2), pdm_distance(tokens, tokens * 2))


def test_hook_captures_the_block_and_is_removed():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    x = torch.randn(4, 2)
    with capture(model[0]) as out:
        model(x)
    assert len(out) == 1 and torch.equal(out[0], model[0](x))
    model(x)
    assert len(out) == 1  # the hook is gone


def test_block_resolution_and_errors():
    unet = nn.Module()
    unet.mid_block = nn.Identity()
    dit = nn.Module()
    dit.transformer_blocks = nn.ModuleList([nn.Identity() for _ in range(5)])
    assert default_block(unet) == "mid_block" and default_block(dit) == "transformer_blocks.2"
    assert resolve_block(dit, "transformer_blocks.4") is dit.transformer_blocks[4]
    with pytest.raises(ConfigError, match=r"pdm_block='up_blocks.9'.*transformer_blocks"):
        resolve_block(dit, "up_blocks.9")


def test_real_latents_are_area_downscaled():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    assert torch.equal(real_at(x, (4, 4)), x)
    assert torch.equal(real_at(x, (2, 2)), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight": float("nan")}, "pdm.weight"),
        ({"c": -1.0}, "pdm.c"),
        ({"network": "student"}, "pdm.network"),
        ({"t_min": 600, "t_max": 500}, "pdm.t_min=600"),
    ],
)
def test_bad_settings_name_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PDMLoss(**kwargs)


def test_weight_zero_is_dropped_by_the_method():
    from wadi.distill.method import Method
    from wadi.distill.vsd import VSDLoss

    method = Method(losses={"vsd": VSDLoss(), "pdm": PDMLoss(weight=0.0)})
    assert list(method.losses) == ["vsd"]
    assert list(Method(losses={"vsd": VSDLoss(), "pdm": PDMLoss(weight=0.5)}).losses) == ["vsd", "pdm"]


class _Ctx:
    """A StepContext over a real (tiny) denoiser."""

    def __init__(self, backbone):
        self.denoiser = backbone.denoiser
        self.alphas_cumprod = backbone.alphas_cumprod
        self.device = torch.device("cpu")
        self.fake_score_adapter = None

    def randn(self, shape, rng):
        return torch.randn(shape, generator=rng)

    def embed_dtype(self):
        return torch.float32


def test_term_on_a_tiny_unet_gives_gradient_to_x0_only(tiny_sd_cfg):
    from wadi.backbones import Conditioning, load_backbone

    backbone = load_backbone(tiny_sd_cfg, load_vae=False)
    backbone.requires_grad_(False)
    ctx = _Ctx(backbone)
    embeds, mask = backbone.text_encoder.encode(["a red circle", "a blue square"])
    cond = Conditioning(embeds, mask)
    real = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    term = PDMLoss(network="teacher", t_min=100, t_max=100)
    with pytest.raises(ValueError, match="needs real latents"):
        term.generator_loss(ctx, real, cond, cond, torch.Generator().manual_seed(0))
    same = term.generator_loss(
        ctx, real.clone(), cond, cond, torch.Generator().manual_seed(0), batch={"latents": real}
    )
    # same latents, same noise and t: equal features
    assert float(same["loss"]) == pytest.approx(0.0, abs=1e-6)
    # a smaller sample: the real side is area-downscaled
    x0 = (real[:, :, ::2, ::2] + 0.3).requires_grad_(True)
    out = term.generator_loss(ctx, x0, cond, cond, torch.Generator().manual_seed(0), batch={"latents": real})
    out["loss"].backward()
    assert float(out["loss"].detach()) > 0 and x0.grad is not None and x0.grad.abs().sum() > 0


def test_vsd_pdm_weight_adds_the_term_to_wadi():
    from wadi.config import validate_train_config
    from wadi.testing import compose_config

    plain = validate_train_config(compose_config([]))
    assert list(plain.method.losses) == ["vsd"]  # weight 0 (default): WaDi's terms as before
    with_pdm = validate_train_config(compose_config(["vsd.pdm_weight=0.5"]))
    assert list(with_pdm.method.losses) == ["vsd", "pdm"] and with_pdm.method.losses["pdm"].weight == 0.5
    with pytest.raises(ConfigError, match="vsd.pdm_weight"):
        validate_train_config(compose_config(["vsd.pdm_weight=inf"]))
