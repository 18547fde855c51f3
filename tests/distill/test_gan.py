"""SwD's GAN head (wadi.distill.gan): the losses and widths against their formulas, the head, the loss term, and
how the module trains and checkpoints it (tiny random U-Net / PixArt)."""

from __future__ import annotations

import math

import pytest
import torch

from wadi.backbones import Conditioning
from wadi.config import ConfigError
from wadi.distill.gan import (
    FeatureClassifier,
    GANLoss,
    critic_loss,
    feature_width,
    generator_gan_loss,
    head_widths,
)
from wadi.distill.method import Method
from wadi.distill.module import WaDiModule
from wadi.distill.pdm import block_features, resolve_block
from wadi.distill.vsd import VSDLoss

PROMPTS = ["a red circle at the left", "a small blue square"]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_losses_match_the_non_saturating_gan_written_out():
    real, fake = torch.tensor([0.3, -2.0, 4.0]), torch.tensor([-1.0, 0.5, 7.0])
    # critic: -log s(l_real) - log(1 - s(l_fake)), each averaged over the batch
    d = (
        sum(-math.log(_sigmoid(float(r))) for r in real) / 3
        + sum(-math.log(1 - _sigmoid(float(f))) for f in fake) / 3
    )
    assert float(critic_loss(real, fake)) == pytest.approx(d, rel=1e-6)
    g = sum(-math.log(_sigmoid(float(f))) for f in fake) / 3  # generator: -log s(l_fake)
    assert float(generator_gan_loss(fake)) == pytest.approx(g, rel=1e-6)
    # a critic that is right has a small loss, the generator's loss is then large
    assert float(critic_loss(torch.full((4,), 9.0), torch.full((4,), -9.0))) < 1e-3
    assert float(generator_gan_loss(torch.full((4,), -9.0))) == pytest.approx(9.0, rel=1e-3)


def test_head_widths_are_the_official_linspace_down_to_one_logit():
    assert head_widths(32, 4) == [32, 24, 16, 8, 1]  # 32, 24.25, 16.5, 8.75, 1 truncated
    assert head_widths(1152, 4) == [1152, 864, 576, 288, 1]  # PixArt-alpha's width
    assert head_widths(8, 1) == [8, 1]


def test_classifier_reads_the_token_mean_and_takes_maps_or_tokens():
    torch.manual_seed(0)
    head = FeatureClassifier(6, layers=2, block="mid_block")
    maps = torch.randn(3, 6, 2, 2)
    tokens = maps.flatten(2).transpose(1, 2)
    expected = tokens.mean(dim=1)
    for blk in head.layers:
        norm, _, lin = blk
        expected = lin(
            torch.nn.functional.gelu(
                torch.nn.functional.layer_norm(expected, (norm.weight.shape[0],), norm.weight, norm.bias)
            )
        )
    assert torch.allclose(head(maps), expected.squeeze(-1), atol=1e-6)
    assert torch.allclose(head(tokens), head(maps))
    assert torch.allclose(head(tokens.flip(1)), head(tokens), atol=1e-6)  # only the mean counts
    with pytest.raises(ValueError, match="built for 6 features at block 'mid_block', but the block gives 5"):
        head(torch.randn(3, 4, 5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight": -1.0}, r"swd.gan_weight=-1.0: expected a finite number >= 0"),
        ({"weight": float("nan")}, r"swd.gan_weight=nan"),
        ({"weight": 5e-3, "critic_weight": 0.0}, r"swd.gan_critic_weight=0.0: expected a finite number > 0"),
        ({"weight": 5e-3, "layers": 0}, r"swd.gan_layers=0: expected an integer >= 1"),
        ({"weight": 5e-3, "layers": 2.5}, r"swd.gan_layers=2.5"),
        ({"weight": 5e-3, "lr": 0}, r"swd.gan_lr=0: expected a finite number > 0"),
        ({"weight": 5e-3, "block": 3}, r"swd.pdm_block=3"),
        ({"weight": 5e-3, "t_min": 600, "t_max": 500}, r"gan.t_min=600: expected <= "),
        ({"weight": 5e-3, "critic_t_min": 9, "critic_t_max": 8}, r"critic_t_min=9"),
        ({"weight": 5e-3, "cap": "yes"}, r"swd.dmd_t_cap='yes'"),
    ],
)
def test_bad_head_options_are_refused_naming_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GANLoss(**kwargs)


def test_weight_zero_drops_the_term_and_builds_no_network():
    method = Method(losses={"vsd": VSDLoss(), "gan": GANLoss(0.0)})
    assert list(method.losses) == ["vsd"]
    assert method.build_networks(torch.nn.Linear(2, 2)) == {}


@pytest.mark.parametrize("kind", ["unet", "pixart"])
def test_feature_width_is_the_blocks_output_width(kind, tiny_sd_cfg, tiny_pixart_cfg):
    from wadi.backbones import load_backbone

    backbone = load_backbone(
        tiny_sd_cfg if kind == "unet" else tiny_pixart_cfg, load_vae=False, load_text=False
    )
    model = backbone.denoiser.model
    names = ["mid_block", "up_blocks.0", "down_blocks.1"] if kind == "unet" else ["transformer_blocks.0"]
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    dim = model.config.get("cross_attention_dim") or model.config.get("caption_channels")
    cond = Conditioning(
        torch.randn(2, 16, dim), torch.ones(2, 16, dtype=torch.long) if kind == "pixart" else None
    )
    for name in names:
        block = resolve_block(model, name)
        feats = block_features(backbone.denoiser, block, x, t, cond, None)
        assert feature_width(model, name, block) == feats.shape[-1], name
        # the fallback (no config entry for the path) reads the same width here
        assert feature_width(torch.nn.Module(), name, block) == feats.shape[-1], name


def _module(cfg, weight: float = 5e-3, **kw) -> WaDiModule:
    torch.manual_seed(0)
    method = Method(losses={"vsd": VSDLoss({"gradient": "dmd"}), "gan": GANLoss(weight, **kw)})
    return WaDiModule(backbone=cfg, method=method, rank=4, fake_rank=2, fake_lr=1e-2)


def test_weight_zero_leaves_the_module_as_without_the_term(tiny_sd_cfg):
    plain = WaDiModule(backbone=tiny_sd_cfg, method=Method(losses={"vsd": VSDLoss()}), rank=4, fake_rank=2)
    zero = WaDiModule(
        backbone=tiny_sd_cfg,
        method=Method(losses={"vsd": VSDLoss(), "gan": GANLoss(0.0)}),
        rank=4,
        fake_rank=2,
    )
    assert len(zero.term_networks) == 0
    assert sorted(zero.state_dict()) == sorted(plain.state_dict())
    assert zero.adapter_keys() == plain.adapter_keys()
    _, fake_opt = zero.configure_optimizers()
    assert len(fake_opt.param_groups) == 1
    assert [id(p) for p in fake_opt.param_groups[0]["params"]] == [
        id(p) for p in zero.fake_score_parameters()
    ]


def test_module_trains_the_head_with_the_fake_score_and_checkpoints_it(tiny_sd_cfg):
    m = _module(tiny_sd_cfg, lr=3e-4)
    head = m.term_networks["gan"]
    assert head is m.method.losses["gan"].network and head.width == 64 and head.block == "mid_block"
    head_params = list(head.parameters())
    assert all(any(p is q for q in m.fake_score_parameters()) for p in head_params)
    keys = m.adapter_keys()
    assert {f"term_networks.gan.{k}" for k in head.state_dict()} <= keys  # kept by on_save_checkpoint
    opt_g, opt_f = m.configure_optimizers()
    assert [g["lr"] for g in opt_f.param_groups] == [1e-2, 3e-4]
    assert [id(p) for p in opt_f.param_groups[1]["params"]] == [id(p) for p in head_params]
    assert not any(p is q for p in head_params for q in opt_g.param_groups[0]["params"])

    rng = torch.Generator().manual_seed(0)
    cond = m.conditioning({"prompt": PROMPTS})
    uncond = m.null_conditioning()
    gen = m.generator_step(cond, uncond, rng)
    assert set(gen) >= {"loss_vsd", "loss_gan"}
    expected = float(gen["loss_vsd"].detach()) + 5e-3 * float(gen["loss_gan"].detach())
    assert float(gen["loss"].detach()) == pytest.approx(expected, rel=1e-6)
    batch = {"latents": torch.randn(2, 4, 8, 8)}
    fake = m.fake_score_step(gen["x0"].detach(), cond, uncond, rng, batch)
    expected = float(fake["loss_vsd"].detach()) + 1e-2 * float(fake["loss_gan"].detach())
    assert float(fake["loss"].detach()) == pytest.approx(expected, rel=1e-6)
    assert {"gan_real_logit", "gan_fake_logit"} <= set(fake)
    opt_f.zero_grad()
    fake["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head_params)
    with pytest.raises(ValueError, match="critic needs real latents"):
        m.fake_score_step(gen["x0"].detach(), cond, uncond, rng, {})


class _Recorder:
    """A denoiser stand-in: records each pass's input and timesteps; its `model.block` outputs x_t itself."""

    def __init__(self):
        self.block = torch.nn.Identity()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, str | None]] = []

    def __call__(self, x_t, t, cond, adapter):
        self.calls.append((x_t.detach().clone(), t.clone(), adapter))
        return self.block(x_t)


def test_critic_noises_real_and_fake_alike_and_generator_side_is_capped():
    from wadi.distill.swd import ScaleWiseStudent

    ac = torch.linspace(0.999, 0.01, 1000)
    term = GANLoss(5e-3, layers=1, t_min=20, t_max=980)
    den = _Recorder()
    term.network, term._module = FeatureClassifier(4, 1), den.block
    ctx = type("Ctx", (), {})()
    ctx.denoiser, ctx.alphas_cumprod, ctx.device = den, ac, torch.device("cpu")
    ctx.randn = lambda shape, rng: torch.randn(shape, generator=rng)
    ctx.embed_dtype = lambda: torch.float32
    ctx.fake_score_adapter = "fake_score"
    ctx.student = ScaleWiseStudent([4, 6, 8], [999, 500, 250], latent_size=8)
    real = torch.randn(64, 4, 12, 12)  # area-downscaled to the sample's 6 x 6
    x0 = torch.randn(64, 4, 6, 6, requires_grad=True)
    term.fake_score_loss(ctx, x0, None, None, torch.Generator().manual_seed(0), batch={"latents": real})
    (xr, tr, ar), (xf, tf, af) = den.calls
    assert torch.equal(tr, tf) and ar == af == "fake_score" and tr.max() > 900  # all timesteps by default
    a, s = ac[tr].sqrt()[:, None, None, None], (1 - ac[tr]).sqrt()[:, None, None, None]
    eps_r = (xr - a * torch.nn.functional.interpolate(real, size=(6, 6), mode="area")) / s
    eps_f = (xf - a * x0.detach()) / s
    assert torch.allclose(eps_r, eps_f, atol=1e-4)  # the same noise
    den.calls.clear()
    out = term.generator_loss(
        ctx, x0, None, None, torch.Generator().manual_seed(1), step=2
    )  # scale 3: t <= 250
    ((_, tg, _),) = den.calls
    assert tg.max() <= 250 and tg.min() >= 20
    out["loss"].backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0
