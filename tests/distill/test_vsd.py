"""VSD's design space (wadi.distill.vsd): each option's math and wiring, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from wadi.distill.losses import dmd_gradient
from wadi.distill.module import WaDiModule
from wadi.distill.vsd import VSDConfig

PROMPTS = ["a red circle at the left", "a small blue square", "a large star", "a green cross at the top"]


def make(cfg, **vsd) -> WaDiModule:
    torch.manual_seed(0)
    return WaDiModule(backbone=cfg, rank=4, fake_rank=2, vsd=vsd)


def test_dmd_gradient_matches_the_direct_formula():
    acp = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    t = torch.tensor([20, 500, 980])
    x0, x_t, er, ef = (torch.randn(3, 4, 2, 2) for _ in range(4))
    g = dmd_gradient(x0, x_t, er, ef, acp, t)
    for i in range(3):
        a, s = acp[t[i]].sqrt(), (1 - acp[t[i]]).sqrt()
        x0_real = (x_t[i] - s * er[i]) / a
        x0_fake = (x_t[i] - s * ef[i]) / a
        expected = (x0_fake - x0_real) / (x0[i] - x0_real).abs().mean()
        assert torch.allclose(g[i], expected, rtol=1e-5, atol=1e-6)
    # equal scores: no gradient; a non-finite score is kept (the module counts it and stops or skips)
    assert torch.equal(dmd_gradient(x0, x_t, er, er, acp, t), torch.zeros_like(x0))
    er[0, 0, 0, 0] = float("inf")
    assert not torch.isfinite(dmd_gradient(x0, x_t, er, ef, acp, t)[0]).all()


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['guidance'\]"):
        VSDConfig.from_mapping({"guidance": 3.0})
    for bad, match in (
        ({"guidance_scale": float("nan")}, "vsd.guidance_scale=nan"),
        ({"guidance_scale": float("inf")}, "vsd.guidance_scale=inf"),
        ({"fake_guidance_scale": -1.0}, "vsd.fake_guidance_scale=-1.0"),
        ({"t_min": 900, "t_max": 100}, "vsd.t_min=900"),
        ({"fake_steps": 0}, "vsd.fake_steps=0"),
        ({"gradient": "sds"}, r"vsd.gradient='sds': expected one of \['dmd', 'vsd'\]"),
        ({"caption_drop": "epoch"}, "vsd.caption_drop='epoch'"),
        ({"uncond_prob": 1.5}, "vsd.uncond_prob=1.5"),
    ):
        with pytest.raises(ValueError, match=match):
            VSDConfig.from_mapping(bad)
    assert VSDConfig.from_mapping({"guidance_scale": 4.5}).fake_scale == 4.5  # None: the teacher's CFG
    assert VSDConfig.from_mapping({"guidance_scale": 4.5, "fake_guidance_scale": 1.0}).fake_scale == 1.0


def _record_cfg_calls(module):
    calls = []
    original = module.denoiser.cfg

    def spy(x_t, t, cond, uncond, scale, adapter):
        calls.append({"t": t.clone(), "scale": scale, "adapter": adapter})
        return original(x_t, t, cond, uncond, scale, adapter)

    module.denoiser.cfg = spy
    return calls


def test_generator_step_uses_each_guidance_and_the_t_range(tiny_sd_cfg):
    m = make(tiny_sd_cfg, guidance_scale=4.5, fake_guidance_scale=1.0, t_min=300, t_max=310)
    calls = _record_cfg_calls(m)
    m.generator_step(
        m.conditioning({"prompt": PROMPTS}), m.null_conditioning(), torch.Generator().manual_seed(0)
    )
    assert [(c["scale"], c["adapter"]) for c in calls] == [(4.5, None), (1.0, "fake_score")]
    assert all(((c["t"] >= 300) & (c["t"] <= 310)).all() for c in calls)


@pytest.mark.parametrize("gradient", ["vsd", "dmd"])
def test_generator_step_gradient_choice_reaches_the_loss(tiny_sd_cfg, gradient):
    m = make(tiny_sd_cfg, gradient=gradient)
    with torch.no_grad():
        for p in m.fake_score_parameters():
            p.normal_(std=0.3)  # eps_real != eps_fake
    out = m.generator_step(
        m.conditioning({"prompt": PROMPTS}), m.null_conditioning(), torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    if gradient == "dmd":  # DMD's per-sample normalisation: g has mean |x0 - x0_real|-relative scale ~ O(1)
        vsd = make(tiny_sd_cfg, gradient="vsd")
        vsd.load_state_dict(m.state_dict())
        ref = vsd.generator_step(
            vsd.conditioning({"prompt": PROMPTS}), vsd.null_conditioning(), torch.Generator().manual_seed(0)
        )
        assert not torch.allclose(out["loss"], ref["loss"])


@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_caption_drop_per_sample_or_per_batch(tiny_sd_cfg, mode):
    m = make(tiny_sd_cfg, uncond_prob=0.5, caption_drop=mode, fake_t_min=7, fake_t_max=7)
    cond, null = m.conditioning({"prompt": PROMPTS}), m.null_conditioning()
    seen = []
    original = m.denoiser.forward

    def spy(x_t, t, c, adapter=None):
        assert (t == 7).all()
        is_null = [torch.equal(c.embeds[i], null.embeds[0]) for i in range(len(PROMPTS))]
        seen.append(sum(is_null))
        return original(x_t, t, c, adapter)

    m.denoiser.forward = spy
    x0 = torch.randn(len(PROMPTS), *m.backbone.latent_shape)
    for seed in range(24):
        m.fake_score_step(x0, cond, null, torch.Generator().manual_seed(seed))
    if mode == "batch":
        assert set(seen) == {0, len(PROMPTS)}  # the whole batch or nothing, both seen
    else:
        assert any(0 < n < len(PROMPTS) for n in seen)


@pytest.mark.slow
def test_fake_steps_per_generator_step(tmp_path, tiny_sd_dir, monkeypatch):
    from tests.test_train_e2e import compose_cfg
    from wadi.train import train

    counts = {"fake": 0, "gen": 0}
    fake, gen = WaDiModule.fake_score_step, WaDiModule.generator_step

    def count(kind, fn):
        def wrapped(self, *a, **k):
            counts[kind] += 1
            return fn(self, *a, **k)

        return wrapped

    monkeypatch.setattr(WaDiModule, "fake_score_step", count("fake", fake))
    monkeypatch.setattr(WaDiModule, "generator_step", count("gen", gen))
    cfg = compose_cfg(tmp_path, tiny_sd_dir, overrides=("max_steps=2", "export=false", "vsd.fake_steps=3"))
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 2  # still one global step per generator step
    assert counts == {"gen": 2, "fake": 6}
