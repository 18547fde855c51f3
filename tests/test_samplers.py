"""Samplers (wadi.samplers): DDIM against diffusers' DDIMScheduler, hybrid sampling limits, the factory."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from wadi.backbones import Conditioning, load_backbone
from wadi.samplers import (
    DDIM,
    Hybrid,
    OneStep,
    build_sampler,
    ddim_sample,
    hybrid_sample,
    one_step,
    seeded_noise,
)


def test_ddim_matches_diffusers_scheduler(tiny_sd_cfg):
    bb = load_backbone(tiny_sd_cfg)
    cond = Conditioning(*bb.text_encoder.encode(["a red circle"]))
    uncond = Conditioning(*bb.text_encoder.encode([""]))
    z = seeded_noise([3], bb.latent_shape, "cpu")
    ours = ddim_sample(bb.denoiser, z, cond, uncond, bb.alphas_cumprod, 5, 2.0)
    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
    )
    sched.set_timesteps(5)
    x = z
    for t in sched.timesteps:
        tt = t.repeat(1)
        eps = bb.denoiser.cfg(x, tt, cond, uncond, 2.0, None)
        x = sched.step(eps, t, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-4)


def test_hybrid_k0_equals_student_and_trajectory(tiny_sd_cfg):
    from wadi.distill.module import WaDiModule

    m = WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2)
    with torch.no_grad():
        for p in m.generator_parameters():
            p.normal_(std=0.2)
    bb = m.backbone
    cond = Conditioning(*bb.text_encoder.encode(["a red circle", "a blue star"]))
    uncond = Conditioning(*bb.text_encoder.encode([""]))
    z = seeded_noise([1, 2], bb.latent_shape, "cpu")
    student = one_step(bb.denoiser, z, cond, bb.alphas_cumprod, "generator")
    assert torch.allclose(
        hybrid_sample(bb.denoiser, z, cond, uncond, bb.alphas_cumprod, teacher_steps=0), student, atol=1e-5
    )
    traj: list = []
    k1 = hybrid_sample(
        bb.denoiser, z, cond, uncond, bb.alphas_cumprod, teacher_steps=2, schedule_steps=4, trajectory=traj
    )
    assert len(traj) == 3 and all(t.shape == z.shape for t in traj)
    assert not torch.allclose(k1, student)
    assert torch.equal(traj[-1], k1)


def test_seeded_noise_is_batch_independent():
    a = seeded_noise([1, 2, 3], (4, 2, 2), "cpu")
    b = seeded_noise([2], (4, 2, 2), "cpu")
    assert torch.equal(a[1], b[0])


def test_factory_dispatch():
    assert build_sampler(steps=25, guidance_scale=3.0, adapter=None) == DDIM(25, 3.0, None)
    assert build_sampler(steps=None, alpha_T=0.1) == OneStep("generator", 0.1)
    hybrid = build_sampler(hybrid_k=2, schedule_steps=10, teacher_guidance=1.5)
    assert hybrid == Hybrid(2, 10, 1.5, "generator", None, None, None)
    assert build_sampler(steps=4, hybrid_k=2) == DDIM(4, 1.0, "generator")  # steps wins, as before
    assert not OneStep().needs_uncond and DDIM(2).needs_uncond and hybrid.needs_uncond
    with pytest.raises(ValueError, match="teacher_steps must be in"):
        build_sampler(hybrid_k=30, schedule_steps=25)


def test_hybrid_of_all_teacher_steps_is_ddim(tiny_sd_cfg):
    """One DDIM loop: the hybrid with k = schedule_steps is the teacher's DDIM, trajectory included."""
    bb = load_backbone(tiny_sd_cfg)
    cond = Conditioning(*bb.text_encoder.encode(["a red circle"]))
    uncond = Conditioning(*bb.text_encoder.encode([""]))
    z = seeded_noise([5], bb.latent_shape, "cpu")
    traj_d, traj_h = [], []
    d = DDIM(3, 2.0, None)(bb.denoiser, z, cond, uncond, bb.alphas_cumprod, traj_d)
    h = Hybrid(3, 3, 2.0)(bb.denoiser, z, cond, uncond, bb.alphas_cumprod, traj_h)
    assert torch.equal(d, h) and all(torch.equal(a, b) for a, b in zip(traj_d, traj_h))
    assert torch.equal(traj_d[-1], d)
