"""The VSD losses of WaDi as pure functions (spec section 3); the schedule math is in wadi.diffusion."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

# The schedule math lives in wadi.diffusion; add_noise, cfg_combine and x0_from_eps stay importable from here.
from wadi.diffusion import add_noise, bcast, cfg_combine, x0_from_eps

__all__ = [
    "add_noise",
    "cfg_combine",
    "dmd_gradient",
    "fake_score_loss",
    "generator_loss",
    "vsd_gradient",
    "x0_from_eps",
]


def vsd_gradient(eps_real: Tensor, eps_fake: Tensor, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """Spec 3.4: g = sigma_t^2 (eps_real - eps_fake), sigma_t^2 = 1 - abar_t.

    NaN/inf are kept: the module counts them (train/vsd_g_nonfinite) and skips or stops (`nonfinite`); zeroing
    them would train on a loss that is silently 0.
    """
    sigma2 = bcast(1 - alphas_cumprod[t].float(), eps_real)
    return sigma2 * (eps_real.float() - eps_fake.float())


def dmd_gradient(
    x0: Tensor, x_t: Tensor, eps_real: Tensor, eps_fake: Tensor, alphas_cumprod: Tensor, t: Tensor
) -> Tensor:
    """DMD's normalised gradient (Yin et al. 2024, eq. 8; DMD2's `compute_distribution_matching_loss`).

    g = (x0_fake - x0_real) / mean_{c,h,w} |x0 - x0_real| per sample, with x0_s = (x_t - sigma_t eps_s) / alpha_t,
    i.e. (sigma_t / alpha_t) (eps_real - eps_fake) over the teacher's per-sample x0 error. NaN/inf are kept.
    """
    abar = bcast(alphas_cumprod[t].float(), eps_real)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x0_real = x0_from_eps(x_t.float(), eps_real.float(), alpha, sigma)
    scale = (x0.detach().float() - x0_real).abs().mean(dim=tuple(range(1, x0.ndim)), keepdim=True)
    return (sigma / alpha) * (eps_real.float() - eps_fake.float()) / scale


def generator_loss(x0: Tensor, g: Tensor) -> Tensor:
    """Spec 3.5: 0.5 mean((x0 - stopgrad(x0 - g))^2); its gradient w.r.t. x0 is g / numel."""
    x0 = x0.float()
    target = (x0 - g).detach()
    return 0.5 * F.mse_loss(x0, target, reduction="mean")


def fake_score_loss(eps_hat: Tensor, eps: Tensor, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """Spec 3 (fake score): mean((alpha_t (eps_hat - eps))^2), alpha_t = sqrt(abar_t)."""
    alpha_t = bcast(alphas_cumprod[t].float().sqrt(), eps)
    return ((alpha_t * (eps_hat.float() - eps.float())) ** 2).mean()
