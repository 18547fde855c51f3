"""Samplers: DDIM against diffusers' DDIMScheduler, hybrid sampling limits, trajectories."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from wadi.backbones import Conditioning, load_backbone
from wadi.sampling import ddim_sample, ddim_timesteps, hybrid_sample, one_step, seeded_noise


def test_trailing_timesteps_match_diffusers():
    s = DDIMScheduler(timestep_spacing="trailing")
    for steps in (1, 4, 25):
        s.set_timesteps(steps)
        assert ddim_timesteps(1000, steps) == s.timesteps.tolist()


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
