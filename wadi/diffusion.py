"""The diffusion math in one place: pure functions of a DDPM schedule (`alphas_cumprod`, abar_t).

Forward noising, the x0 <-> eps relation, the one-step generator's (T, alpha_T, sigma_T), trailing DDIM
timesteps and the deterministic DDIM step, classifier-free guidance, and the schedule quantities the toy
teachers train with (posterior variances, Min-SNR weights). The losses (wadi.distill.losses), the samplers
(wadi.samplers) and toy pretraining (wadi.toy.training) all use these, so every formula is written once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def bcast(values: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) so per-sample schedule values broadcast over latents."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def x0_from_eps(z: Tensor, eps: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> Tensor:
    """x0 = (z - sigma eps_hat) / alpha: the clean latent a noise prediction implies (spec 1 at t = T)."""
    return (z - sigma * eps) / alpha


def add_noise(x0: Tensor, eps: Tensor, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPMScheduler.add_noise)."""
    abar = bcast(alphas_cumprod[t].to(x0.dtype), x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def cfg_combine(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: e_u + w (e_c - e_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def generator_schedule(alphas_cumprod: Tensor, alpha_T: float | None = None) -> tuple[int, float, float]:
    """(T, alpha_T, sigma_T) of the one-step generator: T = last training timestep, alpha_T from the schedule.

    `alpha_T` overrides the scheduler's value (the public PixArt script reuses SD's sqrt(0.0047)).
    """
    T = alphas_cumprod.shape[0] - 1
    a = math.sqrt(float(alphas_cumprod[T])) if alpha_T is None else float(alpha_T)
    return T, a, math.sqrt(1.0 - a * a)


def ddim_timesteps(num_train: int, steps: int, offset: int = 0, from_t: int | None = None) -> list[int]:
    """Trailing DDIM timesteps from T down (diffusers' `timestep_spacing="trailing"`)."""
    start = num_train if from_t is None else from_t + 1
    ts = torch.round(torch.arange(start, 0, -start / steps)).long() - 1
    return [int(t) + offset for t in ts]


def ddim_step(
    x: Tensor, eps: Tensor, alphas_cumprod: Tensor, t: int, t_prev: int | None
) -> tuple[Tensor, Tensor]:
    """One deterministic DDIM step (eta = 0) from t to t_prev (None: to the clean image); returns (x_prev, x0)."""
    abar = alphas_cumprod[t].float()
    abar_prev = (
        alphas_cumprod[t_prev].float() if t_prev is not None else x.new_tensor(1.0, dtype=torch.float32)
    )
    x0 = x0_from_eps(x.float(), eps, abar.sqrt(), (1 - abar).sqrt())
    return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps, x0


def min_snr_weight(alphas_cumprod: Tensor, t: Tensor, gamma: float | None) -> Tensor:
    """Min-SNR-gamma loss weight for epsilon prediction, min(SNR_t, gamma) / SNR_t (Hang et al. 2023).

    SNR_t = abar_t / (1 - abar_t). Ones when gamma is None (the plain epsilon loss of DDPM).
    """
    abar = alphas_cumprod[t].float()
    if gamma is None:
        return torch.ones_like(abar)
    snr = abar / (1 - abar)
    return snr.clamp(max=gamma) / snr


def posterior_log_variance(alphas_cumprod: Tensor) -> tuple[Tensor, Tensor]:
    """(log beta_t, log beta~_t clipped) of q(x_{t-1} | x_t, x0) per timestep (Ho et al. 2020, eq. 7).

    beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) is 0 at t = 0, so its log takes t = 1's value there
    (Nichol & Dhariwal 2021's `posterior_log_variance_clipped`).
    """
    abar = alphas_cumprod.double()
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta = 1 - abar / abar_prev
    var = beta * (1 - abar_prev) / (1 - abar)
    var = torch.cat([var[1:2], var[1:]])
    return beta.log().float(), var.log().float()
