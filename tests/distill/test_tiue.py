"""TiUE's student and KL term (wadi.distill.tiue, wadi.pipelines.tiue_pipeline) on tiny U-Nets."""

from __future__ import annotations

import json
import math

import pytest
import torch

from wadi.config import ConfigError
from wadi.distill.method import Method
from wadi.distill.module import WaDiModule
from wadi.distill.student import OneStepStudent
from wadi.distill.tiue import KLLoss, TiUEStudent, kl_to_standard_normal
from wadi.distill.vsd import VSDLoss
from wadi.pipelines.tiue_pipeline import ddim_chain, leading_timesteps, unet_decode, unet_encode

PROMPTS = ["a red circle at the left", "a small blue square", "a large star"]


@pytest.fixture(scope="module")
def tiue(tiny_sd_dir) -> WaDiModule:
    """One module for the file (a student is a plain object: other students run on its denoiser too)."""
    from wadi.testing import tiny_backbone_config

    torch.manual_seed(0)
    method = Method(
        student=TiUEStudent(k=3, timesteps=[900, 500, 100]),
        losses={"vsd": VSDLoss(), "kl": KLLoss()},
        name="tiue",
    )
    module = WaDiModule(backbone=tiny_backbone_config(tiny_sd_dir), method=method, rank=4, fake_rank=2)
    with torch.no_grad():  # a trained-looking generator, so the adapter matters
        for p in module.generator_parameters():
            p.normal_(std=0.05)
    return module


# ----------------------------------------------------------------- the split equals the U-Net's own forward
def _unet(**extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    ).eval()


@pytest.mark.parametrize(
    "extra, size, masked",
    [
        ({}, 8, False),  # SD's layout
        ({"class_embed_type": "timestep", "time_embedding_act_fn": "silu"}, 8, True),  # class emb, act, mask
        (
            {"addition_embed_type": "text", "addition_embed_type_num_heads": 4},
            7,
            False,
        ),  # addition emb, odd size
    ],
)
def test_split_at_one_t_equals_the_unet_forward(extra, size, masked):
    unet = _unet(**extra)
    x = torch.randn(2, 4, size, size)
    t = torch.tensor([751, 751])
    ehs = torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]) if masked else None
    labels = torch.tensor([3, 900]) if "class_embed_type" in extra else None
    with torch.no_grad():
        stock = unet(x, t, ehs, class_labels=labels, encoder_attention_mask=mask, return_dict=False)[0]
        feats = unet_encode(unet, x, t, ehs, encoder_attention_mask=mask, class_labels=labels)
        ours = unet_decode(unet, feats, t[:1])
    assert torch.equal(ours, stock), (ours - stock).abs().max()


def test_parallel_decoding_equals_sequential(tiue):
    m = tiue
    seq = TiUEStudent(k=3, timesteps=[900, 500, 100], parallel=False)
    z = torch.randn(2, 4, 8, 8)
    cond = m.conditioning({"prompt": PROMPTS[:2]})
    with torch.no_grad():
        eps_par = m.student.noise_maps(m.denoiser, z, cond, m.alphas_cumprod)
        eps_seq = seq.noise_maps(m.denoiser, z, cond, m.alphas_cumprod)
        # each decoder step on its own equals the full U-Net on (z, t_1) only at k = 1: the steps differ
        assert not torch.allclose(eps_par[0], eps_par[1])
        x_par = m.student.generate(m.denoiser, z, cond, m.alphas_cumprod)
        x_seq = seq.generate(m.denoiser, z, cond, m.alphas_cumprod)
    assert eps_par.shape == (3, 2, 4, 8, 8)
    assert torch.allclose(eps_par, eps_seq, atol=1e-5), (eps_par - eps_seq).abs().max()
    assert torch.allclose(x_par, x_seq, atol=1e-4)


def test_k1_is_the_one_step_student(tiue):
    m, k1 = tiue, TiUEStudent(k=1, timesteps=[999])
    z = torch.randn(2, 4, 8, 8)
    cond = m.conditioning({"prompt": PROMPTS[:2]})
    with torch.no_grad():
        ours = k1.generate(m.denoiser, z, cond, m.alphas_cumprod, "generator")
        one = OneStepStudent().generate(m.denoiser, z, cond, m.alphas_cumprod, "generator")
        base = OneStepStudent().generate(m.denoiser, z, cond, m.alphas_cumprod, None)
    assert torch.allclose(ours, one, atol=1e-5, rtol=1e-5), (ours - one).abs().max()
    assert not torch.allclose(ours, base, atol=1e-3)  # the generator adapter was used


def test_encoder_runs_once_per_generation(tiue):
    m = tiue
    unet = m.denoiser.model
    calls = {"conv_in": 0, "mid": 0, "up0": 0, "forward": 0}

    def count(name):
        def hook(*_):
            calls[name] += 1

        return hook

    hooks = [
        unet.conv_in.register_forward_hook(count("conv_in")),
        unet.mid_block.register_forward_hook(count("mid")),
        unet.up_blocks[0].register_forward_hook(count("up0")),
        unet.register_forward_hook(count("forward")),
    ]
    x0 = m.generate_latents(PROMPTS, [0, 1, 2])
    for hook in hooks:
        hook.remove()
    assert x0.shape == (3, 4, 8, 8)
    assert calls == {
        "conv_in": 1,
        "mid": 1,
        "up0": 1,
        "forward": 0,
    }  # one decoder forward on K*B, no U-Net call


def test_timesteps_are_diffusers_ddim_and_the_chain_its_steps():
    from diffusers import DDIMScheduler

    from wadi.toy.assets import toy_asset_path

    sched = DDIMScheduler.from_pretrained(toy_asset_path("toy-sd") / "scheduler", set_alpha_to_one=True)
    sched.set_timesteps(4)
    assert (
        sched.timesteps.tolist()
        == leading_timesteps(1000, 4, sched.config.steps_offset)
        == [751, 501, 251, 1]
    )
    assert TiUEStudent(k=4).timesteps_for(1000) == [751, 501, 251, 1]
    z = torch.randn(2, 4, 8, 8)
    eps = [torch.randn_like(z) for _ in range(4)]
    x = z
    for e, t in zip(eps, sched.timesteps):
        x = sched.step(e, t, x).prev_sample  # eta 0; the last step to abar = 1
    ours = ddim_chain(z, eps, [sched.alphas_cumprod[t] for t in sched.timesteps])
    assert torch.allclose(ours, x, atol=1e-4), (ours - x).abs().max()


# ----------------------------------------------------------------- the KL term
def test_kl_against_the_direct_formula_and_zero_for_standard_normal():
    torch.manual_seed(0)
    maps = 0.3 + 2.0 * torch.randn(6, 4, 8, 8)
    direct = []
    for n in maps:
        m, s2 = n.mean(), n.std() ** 2
        direct.append(-0.5 * (1 + math.log(s2) - m**2 - s2))
    assert torch.allclose(kl_to_standard_normal(maps, "sum"), torch.stack(direct).sum(), rtol=1e-5)
    assert torch.allclose(kl_to_standard_normal(maps, "mean"), torch.stack(direct).mean(), rtol=1e-5)
    std = torch.randn(5, 4, 8, 8)
    flat = std.flatten(1)
    std = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)).view_as(
        std
    )  # m = 0, s^2 = 1 exactly
    assert kl_to_standard_normal(std).abs() < 1e-5
    assert kl_to_standard_normal(maps) > 1.0


def test_configuration_errors_name_the_key():
    with pytest.raises(ConfigError, match="tiue.timesteps"):
        TiUEStudent(k=2, timesteps=[500, 700])
    with pytest.raises(ConfigError, match="tiue.k"):
        TiUEStudent(k=0)
    with pytest.raises(ConfigError, match="tiue.kl_reduction"):
        KLLoss(reduction="max")
    with pytest.raises(ConfigError, match="method.losses.kl"):
        Method(losses={"vsd": VSDLoss(), "kl": KLLoss()})  # the one-step student has no noise maps


def test_pixart_and_fsdp_are_refused_before_loading():
    from wadi.config import validate_train_config
    from wadi.testing import compose_config

    validate_train_config(compose_config(["method=tiue", "backbone=sd21"]))
    with pytest.raises(ConfigError, match="method=tiue needs a U-Net backbone"):
        validate_train_config(compose_config(["method=tiue", "backbone=toy_pixart"]))
    with pytest.raises(ConfigError, match="trainer=fsdp"):
        validate_train_config(compose_config(["method=tiue", "backbone=sd21", "trainer=fsdp"]))


@pytest.mark.parametrize("arch", ["sd15_unet.json", "sd21_unet.json"])
def test_full_size_split_shapes_on_meta(arch):
    from diffusers import UNet2DConditionModel

    from wadi.config import CONF_DIR

    config = json.loads((CONF_DIR / "arch" / arch).read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        z = torch.empty(2, 4, 64, 64)
        ehs = torch.empty(2, 77, config["cross_attention_dim"])
        t = torch.tensor([751, 501, 251, 1])
        feats = unet_encode(unet, z, t[:1].expand(2), ehs)
        eps = unet_decode(unet, feats, t)
    assert eps.shape == (8, 4, 64, 64)
    assert len(feats.skips) == sum(len(b.resnets) for b in unet.up_blocks)


# ----------------------------------------------------------------- training
def test_generator_step_moves_only_the_students_parameters(tiue):
    m = tiue
    with torch.no_grad():
        for p in m.fake_score_parameters():
            p.normal_(std=0.3)
    opt_g, _ = m.configure_optimizers()
    gen_before = [p.detach().clone() for p in m.generator_parameters()]
    fake_before = [p.detach().clone() for p in m.fake_score_parameters()]
    base_before = [p.detach().clone() for p in m.denoiser.parameters() if not p.requires_grad]
    cond = m.conditioning({"prompt": PROMPTS})
    gen = m.generator_step(cond, m.null_conditioning(), torch.Generator().manual_seed(0))
    assert set(gen) >= {"loss", "loss_vsd", "loss_kl"} and gen["loss_kl"] > 0
    opt_g.zero_grad()
    gen["loss"].backward()
    assert all(p.grad is None for p in m.fake_score_parameters())
    opt_g.step()
    assert all(not torch.equal(b, p) for b, p in zip(gen_before, m.generator_parameters()))
    assert all(torch.equal(b, p) for b, p in zip(fake_before, m.fake_score_parameters()))
    frozen = [p for p in m.denoiser.parameters() if not p.requires_grad]
    assert all(torch.equal(b, p) for b, p in zip(base_before, frozen))
