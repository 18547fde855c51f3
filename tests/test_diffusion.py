"""The diffusion math (wadi.diffusion) against diffusers' schedulers and direct formulas."""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from wadi.diffusion import (
    add_noise,
    cfg_combine,
    ddim_step,
    ddim_timesteps,
    generator_schedule,
    min_snr_weight,
    posterior_log_variance,
    x0_from_eps,
)


def sched():
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def test_add_noise_equals_scheduler():
    s = sched()
    x0, eps, t = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.tensor([0, 10, 500, 999])
    assert torch.allclose(add_noise(x0, eps, s.alphas_cumprod, t), s.add_noise(x0, eps, t), atol=1e-6)


def test_x0_inverts_add_noise_at_T():
    acp = sched().alphas_cumprod
    T, a, s = generator_schedule(acp)
    assert T == 999 and abs(a**2 - 0.0047) < 1e-4  # spec: alphas_cumprod[999] ~ 0.0047 for SD
    x0, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    z = add_noise(x0, eps, acp, torch.tensor([T, T]))
    assert torch.allclose(x0_from_eps(z, eps, a, s), x0, atol=1e-4)


def test_alpha_T_override():
    _, a, s = generator_schedule(sched().alphas_cumprod, alpha_T=0.5)
    assert a == 0.5 and abs(s - 0.75**0.5) < 1e-12


def test_cfg_combine():
    u, c = torch.randn(3), torch.randn(3)
    assert torch.allclose(cfg_combine(u, c, 1.5), u + 1.5 * (c - u))


def test_trailing_timesteps_match_diffusers():
    s = DDIMScheduler(timestep_spacing="trailing")
    for steps in (1, 4, 25):
        s.set_timesteps(steps)
        assert ddim_timesteps(1000, steps) == s.timesteps.tolist()


def test_ddim_step_formula_and_last_step_is_x0():
    acp = sched().alphas_cumprod
    x, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    x_prev, x0 = ddim_step(x, eps, acp, 999, 499)
    direct_x0 = (x - (1 - acp[999]).sqrt() * eps) / acp[999].sqrt()
    assert torch.allclose(x0, direct_x0)
    assert torch.allclose(x_prev, acp[499].sqrt() * direct_x0 + (1 - acp[499]).sqrt() * eps)
    last, x0_last = ddim_step(x, eps, acp, 39, None)
    assert torch.equal(last, x0_last)


def test_min_snr_weight_matches_formula():
    abar = torch.linspace(0.999, 0.001, 1000)
    t = torch.tensor([0, 10, 500, 999])
    snr = abar[t] / (1 - abar[t])
    expected = torch.minimum(snr, torch.full_like(snr, 5.0)) / snr
    assert torch.allclose(min_snr_weight(abar, t, 5.0), expected)
    assert torch.equal(min_snr_weight(abar, t, None), torch.ones(4))


def test_posterior_variance_matches_ddpm():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    log_beta, log_var = posterior_log_variance(sched.alphas_cumprod)
    # betas recovered from float32 alphas_cumprod: ~1e-7 absolute, so ~1e-3 relative at beta = 1e-4
    assert torch.allclose(log_beta.exp(), sched.betas, rtol=5e-3)
    t = 500
    abar, abar_prev = sched.alphas_cumprod[t].double(), sched.alphas_cumprod[t - 1].double()
    direct = (1 - abar_prev) / (1 - abar) * sched.betas[t].double()
    assert math.isclose(float(log_var[t].exp()), float(direct), rel_tol=1e-5)
    assert log_var[0] == log_var[1]  # clipped at t = 0
